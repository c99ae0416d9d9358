"""metatrain models in PyTorch: rebuild a checkpoint's (or adapted file's) network as a torch.nn.Module.

    import metatrain_torch                                  # scripts/ on sys.path (PYTHONPATH)
    model = metatrain_torch.from_h5("runs/omni/checkpoint.h5")
    probs = model.predict(x)    # x float32 [B, C, H, W] or [B, D], already scaled

`scripts/export-torch MODEL.h5 -o model.pt` saves {"state_dict", "model_spec", "loss"} with
torch.save; `load("model.pt")` rebuilds the module from it without metatrain or h5py.

The layers, as the engine computes them (src/nn/spec.c parses the spec, src/nn/net.c runs it):
- `input D` takes x [B, D]; `input CxHxW` takes x [B, C, H, W] (or [B, C*H*W]), float32, already
  scaled (an images file's pixel p is p * pixel_scale + pixel_offset, by default p / 255);
  `input tokens T` takes bags of token ids [B, T], -1 padding.
- `embed V D`: the mean of the rows of a [V, D] table that a bag's ids name; zeros for no id.
- `linear N`: y = x W^T + b, W [N, I]; an image input is flattened per sample in (C, H, W) order.
- `conv N [s1|s2]`: 3x3 cross-correlation, padding 1, stride 1 or 2, with bias, W [N, C, 3, 3];
  output side (side - 1) // stride + 1.
- `bn`: batch norm with the batch's own mean and biased variance, always (no running averages, so
  train() and eval() agree and a prediction depends on the whole batch), eps 1e-5, per channel over
  (B, H, W) for images and per feature over B for features; learnable `scale` and `shift`.
- `relu`; `maxpool`: 2x2, stride 2, odd last row/column dropped; `avgpool`: global mean over H x W
  (the image stays [B, C, 1, 1]); `flatten`: a per-sample (C, H, W) view, no parameters.
- `mse` or `xent` last: forward() returns the outputs before the loss, [B, outputs] (targets for
  mse, logits for xent); predict() returns those for mse and softmax probabilities for xent.
Parameter names follow metatrain's: /params/conv1/weight is state_dict key "conv1.weight",
/params/bn1/scale is "bn1.scale". /params/inner_lr (learned inner rates) is not part of the model.
"""
import os
import re
import tempfile
from collections import OrderedDict

import h5py
import numpy as np
import torch
import torch.nn as nn

BN_EPS = 1e-5          # MT_NN_BN_EPS
XENT_MAX_OUTPUTS = 4096  # the parser's bound on a softmax head
INT_MAX = 2**31 - 1
MAX_LAYERS, MAX_TENSORS = 64, 128  # MT_NN_MAX_LAYERS, MT_NN_MAX_TENSORS
SPEC_MAX = 512  # sizeof mt_nn_net.spec
MAX_TABLE_ROWS = 1 << 24  # MT_NN_MAX_TABLE_ROWS: ids travel as exact floats


class ExportError(ValueError):
    """Bad input; str() is "FILE: what is wrong"."""


class BatchStatNorm(nn.Module):
    """Batch norm with the batch's statistics, computed as src/nn/batchnorm.c does: mean and
    biased variance summed in double, gain = scale/sigma and offset = shift - gain*mean rounded
    to float, then y = x*gain + offset rounded once, as the fused multiply-add of the engine's
    FMA and AVX-512 clones does. That single rounding matters where the variance is tiny (one
    sample per feature): gain is then large and the two terms cancel. F.batch_norm(x, None,
    None, scale, shift, training=True, eps=1e-5) agrees to about 1e-6 but refuses one value per
    channel, which the engine accepts (y = shift)."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))  # all but the channel (or feature) axis
        var, mean = torch.var_mean(x.double(), dim=dims, unbiased=False, keepdim=True)
        view = [1, -1] + [1] * (x.dim() - 2)
        gain = self.scale.double().view(view) * torch.rsqrt(var + BN_EPS)
        offset = self.shift.double().view(view) - gain * mean
        gain, offset = gain.to(x.dtype).double(), offset.to(x.dtype).double()
        return (x.double() * gain + offset).to(x.dtype)


class FlatLinear(nn.Linear):
    """metatrain's `linear`: reads its input flattened, so it also follows an image layer."""

    def forward(self, x):
        return super().forward(x.flatten(1))


class EmbedBag(nn.Module):
    """metatrain's `embed V D`: the mean of the table rows a bag of token ids names (-1 pads; a
    bag of no id gives zeros). Takes the ids [B, T] as integers or exact floats."""

    def __init__(self, rows, width):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, width))

    def forward(self, x):
        ids = x.long()
        valid = ids >= 0
        rows = self.weight[ids.clamp(min=0)] * valid.unsqueeze(-1)  # [B, T, D], pads zeroed
        count = valid.sum(1, keepdim=True).clamp(min=1).to(rows.dtype)
        return rows.sum(1) / count


class GlobalAvgPool(nn.Module):
    """Mean over H x W, keeping [B, C, 1, 1]; on features (H = W = 1 there) the identity."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True) if x.dim() == 4 else x


def _positive(word, limit=1 << 20):
    """The C parser's parse_positive: a base-10 integer in [1, limit] (strtol takes a sign)."""
    if not re.fullmatch(r"[+-]?[0-9]+", word):
        return None
    value = int(word)
    return value if 0 < value <= limit else None


def parse_spec(spec):
    """Parses a model spec exactly as mt_nn_parse does. Returns (input shape, [(name, module,
    {role: shape})], loss, outputs); raises ValueError naming what is wrong."""
    if len(spec.encode()) >= SPEC_MAX:
        raise ValueError("spec longer than %d characters" % (SPEC_MAX - 1))
    shape, features, layers, loss, tokens = None, False, [], None, False
    counters = {}

    def add(base, module, tensors=None):
        counters[base] = counters.get(base, 0) + 1
        layers.append(("%s%d" % (base, counters[base]), module, tensors or {}))

    # strtok skips empty items (",,"); an item of blanks alone is an error.
    items = [item for item in spec.split(",") if item]
    for number, item in enumerate(items, 1):
        words = item.split()
        if not words:
            raise ValueError("item %d is empty" % number)
        op, args = words[0], words[1:]
        if loss:
            raise ValueError("'%s' after the loss; the loss must come last" % op)
        if shape is None and op != "input":
            raise ValueError("must start with 'input D' or 'input CxHxW'")
        engine_layers = [tensors for name, _, tensors in layers if not name.startswith("flatten")]
        if len(engine_layers) >= MAX_LAYERS - 1 or sum(map(len, engine_layers)) >= MAX_TENSORS - 2:
            raise ValueError("more than %d layers" % (MAX_LAYERS - 1))
        c, h, w = shape if shape else (0, 0, 0)
        if tokens and not layers and op not in ("embed", "input"):
            raise ValueError("'input tokens T' must be followed by 'embed V D', not '%s'" % op)
        if op == "input" and len(args) == 2 and args[0] == "tokens":
            if shape is not None or _positive(args[1]) is None:
                raise ValueError("'input tokens T' takes a positive bag length T, once")
            shape, features, tokens = (_positive(args[1]), 1, 1), True, True
            input_shape = (shape[0],)
        elif op == "embed":
            if not tokens or layers:
                raise ValueError("'embed' must come right after 'input tokens T'")
            rows = _positive(args[0], MAX_TABLE_ROWS) if len(args) == 2 else None
            width = _positive(args[1]) if len(args) == 2 else None
            if rows is None or width is None:
                raise ValueError("'embed' takes a table size V and a width D: '%s'" % item.strip())
            add("embed", EmbedBag(rows, width), {"weight": (rows, width)})
            shape = (width, 1, 1)
        elif op == "input":
            if shape is not None or len(args) != 1:
                raise ValueError("'input' takes one shape, D or CxHxW, once")
            dims = [_positive(p) for p in args[0].split("x") if p]
            if None in dims:
                raise ValueError("bad input shape '%s'" % item.strip())
            if len(dims) == 1:
                shape, features = (dims[0], 1, 1), True
            elif len(dims) == 3:
                shape = tuple(dims)
            else:
                raise ValueError("input shape must be D or CxHxW")
            input_shape = tuple(dims)
        elif op == "linear":
            out = _positive(args[0]) if len(args) == 1 else None
            if out is None:
                raise ValueError("'linear' takes a positive output size: '%s'" % item.strip())
            add("linear", FlatLinear(c * h * w, out), {"weight": (out, c * h * w), "bias": (out,)})
            shape, features = (out, 1, 1), True
        elif op == "conv":
            out = _positive(args[0]) if 1 <= len(args) <= 2 else None
            if out is None:
                raise ValueError("'conv' takes a filter count and s1 or s2: '%s'" % item.strip())
            stride = {"s1": 1, "s2": 2}.get(args[1]) if len(args) == 2 else 1
            if stride is None:
                raise ValueError("conv stride must be s1 or s2: '%s'" % item.strip())
            if features:
                raise ValueError("'conv' needs an image input, not features")
            add("conv", nn.Conv2d(c, out, 3, stride=stride, padding=1),
                {"weight": (out, c, 3, 3), "bias": (out,)})
            shape = (out, (h - 1) // stride + 1, (w - 1) // stride + 1)
        elif op == "bn" and not args:
            add("bn", BatchStatNorm(c), {"scale": (c,), "shift": (c,)})
        elif op == "relu" and not args:
            add("relu", nn.ReLU())
        elif op in ("maxpool", "avgpool") and not args:
            # One counter for both pools, as in spec.c: "maxpool1, avgpool2".
            counters["pool"] = counters.get("pool", 0) + 1
            if op == "maxpool":
                if h < 2 or w < 2:
                    raise ValueError("'maxpool' needs an input of at least 2x2")
                module, shape = nn.MaxPool2d(2, 2), (c, h // 2, w // 2)
            else:
                module, shape = GlobalAvgPool(), (c, 1, 1)
            layers.append(("%s%d" % (op, counters["pool"]), module, {}))
        elif op == "flatten" and not args:
            add("flatten", nn.Flatten())  # no layer in metatrain: a view
            shape, features = (c * h * w, 1, 1), True
        elif op in ("mse", "xent") and not args:
            loss = op
        else:
            raise ValueError("unknown item '%s' (expected input, linear, conv, bn, relu, maxpool, "
                             "avgpool, flatten, mse or xent)" % item.strip())
        if shape and shape[0] * shape[1] * shape[2] > INT_MAX:
            raise ValueError("'%s' gives a shape of more than %d values per sample" % (item.strip(), INT_MAX))
    if shape is None:
        raise ValueError("empty spec")
    if not loss:
        raise ValueError("must end with a loss, mse or xent")
    if not any(tensors for _, _, tensors in layers):
        raise ValueError("the network has no parameters")
    outputs = shape[0] * shape[1] * shape[2]
    if loss == "xent" and not 2 <= outputs <= XENT_MAX_OUTPUTS:
        raise ValueError("xent needs between 2 and %d outputs, not %d" % (XENT_MAX_OUTPUTS, outputs))
    return input_shape, layers, loss, outputs


class MetatrainNet(nn.Sequential):
    """A metatrain network; children are named as metatrain's layers (linear1, conv2, bn1, ...)."""

    def __init__(self, spec):
        in_shape, layers, loss, outputs = parse_spec(spec)
        super().__init__(OrderedDict((name, module) for name, module, _ in layers))
        self.model_spec, self.loss, self.in_shape, self.outputs = spec, loss, in_shape, outputs
        # state_dict key -> shape; a key is its /params path with '.' for '/' ("conv1.weight").
        self.tensors = OrderedDict(("%s.%s" % (name, role), shape)
                                   for name, _, tensors in layers for role, shape in tensors.items())

    def forward(self, x):
        x = x.reshape(x.shape[0], *self.in_shape)  # [B, C*H*W] is accepted for images too
        return super().forward(x).flatten(1)  # a net ending on an image layer yields [B, C*H*W]

    @torch.no_grad()
    def predict(self, x):
        """Outputs for mse, softmax probabilities for xent; x a tensor or an array (one batch:
        batch norm's statistics are this batch's)."""
        y = self(torch.as_tensor(x, dtype=torch.float32))
        return torch.softmax(y, dim=1) if self.loss == "xent" else y


def _text(value):
    """A string attribute as h5py returns it (fixed-length bytes, str, or a 1-element array)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).split(b"\0", 1)[0].decode("utf-8")
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def from_h5(path):
    """The network of a metatrain checkpoint or adapted file, with its /params loaded."""
    def bad(what):
        return ExportError("%s: %s" % (path, what))

    if not os.path.exists(path):
        raise bad("no such file")
    try:
        f = h5py.File(path, "r")  # HDF5 finds the superblock past the 512-byte user block itself
    except OSError as e:
        raise bad("not a readable HDF5 file (%s)" % e) from None
    with f:
        if "model_spec" not in f.attrs:
            raise bad("no root attribute model_spec")
        try:
            spec = _text(f.attrs["model_spec"])
        except ValueError:
            raise bad("root attribute model_spec: not a string") from None
        try:
            model = MetatrainNet(spec)
        except ValueError as e:
            raise bad("model_spec '%s': %s" % (spec, e)) from None
        params = f.get("params")
        if not isinstance(params, h5py.Group):
            raise bad("/params: no such group")
        state = OrderedDict()
        for key, shape in model.tensors.items():
            name = "/params/" + key.replace(".", "/")
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise bad("%s: no such dataset" % name)
            if ds.dtype != np.float32 or ds.shape != shape:
                raise bad("%s: expected float32 %s, got %s %s" % (name, list(shape), ds.dtype, list(ds.shape)))
            state[key] = torch.from_numpy(ds[()])
        # A tensor the spec does not name means the file and its spec disagree.
        extra = []
        params.visititems(lambda n, o: extra.append(n) if isinstance(o, h5py.Dataset) and
                          not n.startswith("inner_lr/") and n.replace("/", ".") not in state else None)
        if extra:
            raise bad("/params/%s: not a tensor of model_spec '%s'" % (extra[0], spec))
    model.load_state_dict(state)
    return model


def save(model, path):
    """torch.save of {"state_dict", "model_spec", "loss"}, atomically: a temporary file beside
    the target, renamed over it, so a failure never leaves a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save({"state_dict": model.state_dict(), "model_spec": model.model_spec, "loss": model.loss}, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path):
    """The module saved by save() (or scripts/export-torch)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # a PyTorch before 1.13 has no weights_only
        saved = torch.load(path, map_location="cpu")
    if not isinstance(saved, dict) or not {"state_dict", "model_spec", "loss"} <= saved.keys():
        raise ExportError("%s: not a metatrain_torch export (needs state_dict, model_spec, loss)" % path)
    model = MetatrainNet(saved["model_spec"])
    if model.loss != saved["loss"]:
        raise ExportError("%s: loss '%s' disagrees with model_spec '%s'" % (path, saved["loss"], model.model_spec))
    model.load_state_dict(saved["state_dict"])
    return model

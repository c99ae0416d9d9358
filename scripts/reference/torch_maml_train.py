#!/usr/bin/python3
"""Trains and scores second-order MAML in PyTorch under metatrain's protocol, so that the two
learn on an equal footing: the same networks and initialization (torch_maml.py), the same task
distributions, the same outer optimizer, and evaluation tasks that do not change with the
training seed.

usage: torch_maml_train.py sinusoid --seed S [--iterations N] [--head-init-scale C] [--out PARAMS.pt]
       torch_maml_train.py omniglot --data SMALL1.h5 --episodes EPISODES.h5 --seed S [--ways W] ...
       torch_maml_train.py score CHECKPOINT.h5 (--sinusoid | --episodes EPISODES.h5) [--inner-lr A] ...

sinusoid: the MLP 1-40-40-1, 10 support and 10 query points, one inner step at 0.01, meta-batch
  25, Adam at 1e-3, 70,000 iterations (scripts/configs/sinusoid-maml.ini). Then 600 evaluation
  tasks drawn from a generator seeded with EVAL_SEED, whatever --seed is, scored after 0 to 10
  inner steps.
omniglot: the 4-conv network, one inner step at 0.4 in training, 3 at evaluation, meta-batch 32,
  one query per class in training, 3,000 iterations (scripts/configs/omniglot-5w1s.ini with
  --set task.augment_shift=0: no image moves, as in the paper). Training
  episodes come from --data's train split (/class_split 0), as metatrain samples them: W distinct
  classes, then shots + queries distinct images of each. The score is on the fixed episodes of
  --episodes (scripts/fixed-episodes), the same file `metatrain eval --set eval.episodes=...`
  reads.
Both start He-normal with zero biases; --head-init-scale C multiplies the last layer's weights by
  C after the same draws, as model.head_init_scale does (sinusoid-maml.ini: 0.3).
score: loads a metatrain checkpoint's /params into the functional network (by name: linear1 up
  to the last linearK, the relu MLP its model_spec attribute names, or convK and bnK) and scores it
  on the same tasks as above, so the two sides' evaluation sets can be compared directly. It adapts
  as the checkpoint's algorithm does (expand_rates in src/meta/inner_loop.c): at one rate,
  --inner-lr or else the meta.inner_lr it was trained with, for maml, fomaml, reptile and anil (the
  head only); at the learned /params/inner_lr for metasgd, mamlpp and mamlpp-metasgd, steps past
  the trained ones at the last one's rates. imaml is refused.

Every result is one JSON object: per step the mean over tasks and its 95% confidence half-width,
1.96 s / sqrt(n), as `metatrain eval` prints them. One thread. Needs Debian's python3-torch and
python3-h5py (scripts/install-deps --bench).
"""
import argparse
import configparser
import itertools
import json
import math
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_maml import Net, make_net, mlp_forward, mlp_shapes, sinusoid_task, task_objective  # noqa: E402

EVAL_SEED = 1000003  # the sinusoid evaluation tasks: one set for every training seed
SINE_EVAL_TASKS = 600
# How a checkpoint adapts, by its algorithm (src/meta/algorithms.c, the traits table); the rest
# (order, multi-step loss, outer schedule) only changes training.
FIXED_RATE = ("maml", "fomaml", "reptile", "anil")  # anil: only the head moves
LEARNED_RATES = ("metasgd", "mamlpp", "mamlpp-metasgd")  # /params/inner_lr


def summary(per_step):
    """[[value per task] per step] -> [{step, mean, ci95}]"""
    out = []
    for step, values in enumerate(per_step):
        v = np.asarray(values, dtype=np.float64)
        ci = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
        out.append({"step": step, "mean": float(v.mean()), "ci95": float(ci)})
    return out


def score_task(net, theta, rates, task, steps, metric):
    """metric(query outputs, query targets) after 0..steps plain (first-order) inner steps, step k
    at rates[k] (one rate per tensor of θ), past the last at the last, as metatrain evaluates."""
    xs, ys, xq, yq = task
    fast = [p.detach().requires_grad_() for p in theta]
    values = []
    for step in range(steps + 1):
        with torch.no_grad():
            values.append(metric(net.forward(fast, xq), yq))
        if step == steps:
            break
        grads = torch.autograd.grad(net.loss(net.forward(fast, xs), ys), fast)
        rate = rates[min(step, len(rates) - 1)]
        fast = [(w - a * g).detach().requires_grad_() for w, a, g in zip(fast, rate, grads)]
    return values


def mse(out, y):
    return torch.mean((out - y) ** 2).item()


def accuracy(out, y):
    return (out.argmax(1) == y).double().mean().item()


def one_rate(theta, lr):
    """score_task's rates for plain MAML: lr for every tensor at every step."""
    return [[lr] * len(theta)]


def evaluate(net, theta, rates, tasks, steps, metric):
    per_step = [[] for _ in range(steps + 1)]
    for task in tasks:
        for step, value in enumerate(score_task(net, theta, rates, task, steps, metric)):
            per_step[step].append(value)
    return summary(per_step)


def sinusoid_eval_tasks():
    gen = torch.Generator().manual_seed(EVAL_SEED)
    return (sinusoid_task(10, 10, torch.float32, gen) for _ in range(SINE_EVAL_TASKS))


class Images:
    """An images file of scripts/omniglot-to-h5: uint8 pixels scaled as metatrain scales them."""

    def __init__(self, path):
        with h5py.File(path, "r") as f:
            scale, offset = float(f.attrs.get("pixel_scale", 1 / 255)), float(f.attrs.get("pixel_offset", 0))
            self.x = torch.from_numpy(f["images"][...].astype(np.float32) * np.float32(scale) + np.float32(offset))
            self.labels = f["labels"][...]
            self.class_split = f["class_split"][...]
        self.by_class = {c: np.flatnonzero(self.labels == c) for c in range(len(self.class_split))}

    def sample(self, ways, shots, queries, rng, split=0):
        classes = rng.choice(np.flatnonzero(self.class_split == split), ways, replace=False)
        support, query = [], []
        for c in classes:
            pick = rng.choice(self.by_class[c], shots + queries, replace=False)
            support.append(pick[:shots])
            query.append(pick[shots:])
        ys = torch.arange(ways).repeat_interleave(shots)
        yq = torch.arange(ways).repeat_interleave(queries)
        return self.x[np.concatenate(support)], ys, self.x[np.concatenate(query)], yq


def attr(f, name):
    """An HDF5 attribute, a str where h5py gives bytes."""
    value = f.attrs[name]
    return value.decode() if isinstance(value, bytes) else value


def episode_tasks(path):
    """The fixed episodes of scripts/fixed-episodes, with the images of the file they name."""
    with h5py.File(path, "r") as f:
        data = attr(f, "data")
        e = {k: f["episodes"][k][...] for k in ("support", "support_labels", "query", "query_labels")}
    if not os.path.isabs(data):
        data = os.path.join(os.path.dirname(os.path.abspath(path)), data)
    images = Images(data)
    ways = int(e["support_labels"].max()) + 1
    tasks = [(images.x[e["support"][i]], torch.from_numpy(e["support_labels"][i]).long(),
              images.x[e["query"][i]], torch.from_numpy(e["query_labels"][i]).long())
             for i in range(len(e["support"]))]
    return tasks, ways


def start(kind, ways, args):
    """(net, generator, θ) of a training run: He-normal from --seed, then the last layer's weights
    (the last tensor but its bias) times --head-init-scale, so the other tensors are those of the
    unscaled start."""
    net = make_net(kind, ways)
    gen = torch.Generator().manual_seed(args.seed)
    theta = net.init_params(torch.float32, gen)
    with torch.no_grad():
        theta[-2].mul_(args.head_init_scale)
    return net, gen, theta


def trained(args, seconds):
    """The result fields every training command reports."""
    return dict(seed=args.seed, iterations=args.iterations, head_init_scale=args.head_init_scale,
                train_seconds=round(seconds, 1))


def train(theta, iterations, log, backward):
    """Adam at 1e-3, `iterations` times, on the gradient backward() accumulates into θ (it
    returns the meta-batch's mean query loss)."""
    opt = torch.optim.Adam(theta, lr=0.001, betas=(0.9, 0.999), eps=1e-8)
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        opt.zero_grad()
        loss = backward()
        opt.step()
        if log and it % log == 0:
            print(f"iter {it}/{iterations}  meta-loss {loss:.4g}  {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    return time.perf_counter() - start


def backward_of(loss):
    loss.backward()
    return loss.item()


def sinusoid_batch(tasks, shots, queries, generator):
    """`tasks` sinusoid tasks at once, drawn as sinusoid_task draws one: [B, n, 1] tensors."""
    u = torch.rand(tasks, 2, generator=generator)
    amplitude, phase = 0.1 + 4.9 * u[:, :1, None], math.pi * u[:, 1:, None]
    x = torch.rand(tasks, shots + queries, 1, generator=generator) * 10 - 5
    y = amplitude * torch.sin(x - phase)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def mlp_batched(params, x):
    """The MLP on B tasks at once, each with its own weights: params [B, ...], x [B, n, in]."""
    n = len(params) // 2
    for layer in range(n):
        x = torch.baddbmm(params[2 * layer + 1].unsqueeze(1), x, params[2 * layer].transpose(1, 2))
        if layer < n - 1:
            x = torch.relu(x)
    return x


def sinusoid_objective(theta, task):
    """The mean over B tasks of the query loss after one second-order inner step at 0.01, the B
    tasks in one batched pass: the gradient of the sum of the tasks' support losses with respect
    to each task's own copy of θ is that task's gradient, so this equals task_objective's mean."""
    xs, ys, xq, yq = task
    fast = [p.unsqueeze(0).expand(xs.shape[0], *p.shape) for p in theta]
    support = ((mlp_batched(fast, xs) - ys) ** 2).mean(dim=(1, 2)).sum()
    grads = torch.autograd.grad(support, fast, create_graph=True)
    fast = [w - 0.01 * g for w, g in zip(fast, grads)]
    return ((mlp_batched(fast, xq) - yq) ** 2).mean(dim=(1, 2)).mean()


def trained_inner_lr(f, path, error):
    """meta.inner_lr of the config a checkpoint stores (its root attribute `config`)."""
    config = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    try:
        config.read_string(attr(f, "config"))
        return config.getfloat("meta", "inner_lr")
    except (KeyError, configparser.Error, ValueError) as e:
        error(f"{path}: no meta.inner_lr in its config attribute ({e}); give --inner-lr")


def load_checkpoint(path, kind, ways, inner_lr, error):
    """(net, θ, rates) of a metatrain checkpoint for score_task: /params in torch_maml's order ([W, b]
    per linear, [W, b, scale, shift] per block), the rates as mt_meta_tensors (src/meta/algorithms.c)
    stores them and expand_rates (src/meta/inner_loop.c) applies them."""
    with h5py.File(path, "r") as f:
        p, algorithm = f["params"], attr(f, "algorithm")
        if algorithm not in FIXED_RATE + LEARNED_RATES:
            error(f"{path}: {algorithm} checkpoints are not supported" +
                  (" (imaml adapts with a proximal pull toward θ, meta.lambda)" if algorithm == "imaml" else ""))
        if "inner_lr" in p and inner_lr is not None:
            error(f"--inner-lr: {path} is a {algorithm} checkpoint, whose inner rates are learned (/params/inner_lr)")
        if kind == "mlp":
            layers = itertools.takewhile(lambda i: f"linear{i}" in p, itertools.count(1))
            names = [f"linear{i}/{r}" for i in layers for r in ("weight", "bias")]
        else:
            names = [f"{layer}{i}/{r}" for i in range(1, 5)
                     for layer, roles in (("conv", ("weight", "bias")), ("bn", ("scale", "shift")))
                     for r in roles] + ["linear1/weight", "linear1/bias"]
        theta = [torch.from_numpy(p[n][...].astype(np.float32)) for n in names]
        if kind == "mlp":
            sizes = [1] + [w.shape[0] for w in theta[::2]]
            mlp = ", ".join(["input 1"] + [f"linear {o}, relu" for o in sizes[1:-1]] + ["linear 1", "mse"])
            spec = ", ".join(" ".join(item.split()) for item in attr(f, "model_spec").split(","))
            if spec != mlp:
                error(f"{path}: model_spec {spec!r} is not the relu MLP of /params ({mlp})")
            net = Net(mlp_shapes(sizes), mlp_forward, F.mse_loss)
        else:
            net = make_net("conv4", ways)

        def learned(name):
            return torch.from_numpy(p["inner_lr/" + name][...])

        if algorithm == "metasgd":  # inner_lr/<layer>/<role>: the tensor's shape, at every step
            return net, theta, [[learned(n) for n in names]]
        if algorithm == "mamlpp":  # inner_lr/<layer>: [steps], one rate per layer (all its tensors) and step
            per_tensor = [learned(n.split("/")[0]) for n in names]
            return net, theta, [list(step) for step in zip(*per_tensor)]
        if algorithm == "mamlpp-metasgd":  # inner_lr/<layer>/<role>: [steps, count], row k for step k
            per_tensor = [learned(n) for n in names]
            return net, theta, [[r.reshape(w.shape) for r, w in zip(step, theta)] for step in zip(*per_tensor)]
        rate = trained_inner_lr(f, path, error) if inner_lr is None else inner_lr
    head = names[-1].split("/")[0]  # anil adapts the last layer with parameters only (mt_nn_head_range)
    return net, theta, [[rate if algorithm != "anil" or n.startswith(head + "/") else 0.0 for n in names]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sinusoid")
    o = sub.add_parser("omniglot")
    c = sub.add_parser("score")
    for p in (s, o):
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--out", help="save the trained parameters (a list of tensors, torch.save)")
        p.add_argument("--log", type=int, default=1000, help="progress line period (0: none)")
        p.add_argument("--head-init-scale", type=float, default=1.0,
                       help="the last layer's initial weights: He-normal times this (model.head_init_scale)")
    s.add_argument("--iterations", type=int, default=70000)
    o.add_argument("--iterations", type=int, default=3000)
    o.add_argument("--data", required=True)
    o.add_argument("--ways", type=int, default=5)
    o.add_argument("--train-steps", type=int, default=1)
    o.add_argument("--eval-steps", type=int, default=3)
    o.add_argument("--inner-lr", type=float, default=0.4)
    o.add_argument("--meta-batch", type=int, default=32)
    for p in (o, c):
        p.add_argument("--episodes", help="fixed evaluation episodes (scripts/fixed-episodes)")
    c.add_argument("checkpoint")
    c.add_argument("--sinusoid", action="store_true")
    c.add_argument("--inner-lr", type=float)
    c.add_argument("--steps", type=int)
    args = ap.parse_args()
    torch.set_num_threads(1)

    result = {"command": args.command}
    if args.command == "sinusoid":
        net, gen, theta = start("mlp", 0, args)
        seconds = train(theta, args.iterations, args.log,
                        lambda: backward_of(sinusoid_objective(theta, sinusoid_batch(25, 10, 10, gen))))
        result.update(trained(args, seconds),
                      per_step=evaluate(net, theta, one_rate(theta, 0.01), sinusoid_eval_tasks(), 10, mse))
    elif args.command == "omniglot":
        net, gen, theta = start("conv4", args.ways, args)
        images, rng = Images(args.data), np.random.default_rng(args.seed)

        def meta_backward():  # task by task, each graph freed at once (grouped convolutions are slower)
            total = 0.0
            for _ in range(args.meta_batch):
                task = images.sample(args.ways, 1, 1, rng)
                total += backward_of(task_objective(net, theta, None, args.inner_lr, task, args.train_steps) /
                                     args.meta_batch)
            return total

        seconds = train(theta, args.iterations, args.log, meta_backward)
        tasks, ways = episode_tasks(args.episodes)
        if ways != args.ways:
            sys.exit(f"{args.episodes}: /episodes/support_labels: {ways}-way episodes for a {args.ways}-way model")
        result.update(trained(args, seconds),
                      per_step=evaluate(net, theta, one_rate(theta, args.inner_lr), tasks, args.eval_steps, accuracy))
    else:
        if args.sinusoid == bool(args.episodes):
            ap.error("score takes --sinusoid or --episodes")
        if args.sinusoid:
            net, theta, rates = load_checkpoint(args.checkpoint, "mlp", 0, args.inner_lr, ap.error)
            result["per_step"] = evaluate(net, theta, rates, sinusoid_eval_tasks(),
                                          10 if args.steps is None else args.steps, mse)
        else:
            tasks, ways = episode_tasks(args.episodes)
            net, theta, rates = load_checkpoint(args.checkpoint, "conv4", ways, args.inner_lr, ap.error)
            result["per_step"] = evaluate(net, theta, rates, tasks, 3 if args.steps is None else args.steps, accuracy)
        result["checkpoint"] = args.checkpoint
    if args.command != "score" and args.out:
        torch.save([p.detach() for p in theta], args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

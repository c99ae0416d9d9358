#!/usr/bin/python3
"""The PyTorch reference for scripts/bench: second-order MAML and Meta-SGD written the way the
usual PyTorch meta-learning libraries write them (learn2learn, higher, torchmeta).

usage: torch_maml.py WORKLOAD [--seconds S] [--json] [--steps K] [--meta-batch B] [--iterations N]
       torch_maml.py --check

Parameters are a list of tensors and the forward pass is functional (torch.nn.functional linear,
conv2d, batch_norm with batch statistics, relu, mse_loss, cross_entropy). Each inner step is
torch.autograd.grad(support loss, fast weights, create_graph=True); Meta-SGD's per-parameter
rates are meta-parameters too. The meta-batch runs one task at a time, each task's query loss
(divided by the meta-batch) backpropagated into the meta-parameters, then one Adam step
(lr 0.001, betas 0.9 and 0.999, eps 1e-8). One thread. The workloads are metatrain's (the table
in src/cli/bench.c): same networks, inner steps, meta-batches, ways, shots, queries and inner
rates; sinusoid tasks are sampled in torch inside the timed loop (as metatrain samples its own),
the conv workloads use fixed random 28x28 images with labels i mod ways.

WORKLOAD prints {workload, torch_tasks_per_s, torch_rss_mb, iterations, seconds} (--json: one JSON
object). torch_rss_mb is this process's peak RSS (getrusage ru_maxrss). --steps and --meta-batch
override the workload's; --iterations N runs exactly N outer steps untimed of a warm-up (for the
memory measurement of long inner loops). --check compares the meta-gradient with central finite
differences of the meta-objective in double precision (MAML and Meta-SGD on a tiny MLP, MAML on a
tiny conv and batch-norm network) and exits 1 if they disagree. Needs Debian's python3-torch
(scripts/install-deps --bench).
"""
import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

WORKLOADS = {
    "sinusoid-maml-1": dict(net="mlp", algorithm="maml", steps=1, meta_batch=25, ways=0, shots=10, queries=10,
                            inner_lr=0.01),
    "sinusoid-maml-5": dict(net="mlp", algorithm="maml", steps=5, meta_batch=25, ways=0, shots=10, queries=10,
                            inner_lr=0.01),
    "sinusoid-metasgd-1": dict(net="mlp", algorithm="metasgd", steps=1, meta_batch=25, ways=0, shots=10,
                               queries=10, inner_lr=0.01),
    "omniglot-5w1s-maml-1": dict(net="conv4", algorithm="maml", steps=1, meta_batch=32, ways=5, shots=1,
                                 queries=15, inner_lr=0.4),
    "omniglot-20w1s-maml-5": dict(net="conv4", algorithm="maml", steps=5, meta_batch=16, ways=20, shots=1,
                                  queries=15, inner_lr=0.1),
}


# ---- networks: parameter shapes and functional forward passes -------------------------------

def mlp_shapes(sizes):
    """[W (out, in), b (out)] per linear layer: "input 1, linear 40, relu, linear 40, relu, linear 1"."""
    shapes = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        shapes += [("weight", (o, i)), ("bias", (o,))]
    return shapes


def mlp_forward(params, x):
    n = len(params) // 2
    for layer in range(n):
        x = F.linear(x, params[2 * layer], params[2 * layer + 1])
        if layer < n - 1:
            x = F.relu(x)
    return x


def conv_shapes(in_c, widths, flat, ways):
    """Per block: conv W (O, C, 3, 3), conv b (O), bn scale (O), bn shift (O); then the head."""
    shapes, c = [], in_c
    for o in widths:
        shapes += [("weight", (o, c, 3, 3)), ("bias", (o,)), ("scale", (o,)), ("shift", (o,))]
        c = o
    return shapes + [("weight", (ways, flat)), ("bias", (ways,))]


def conv_forward(params, x):
    """Blocks of conv 3x3 stride 2 pad 1, batch norm on the batch's statistics (eps 1e-5), relu;
    then flatten and a linear head: metatrain's "conv 64 s2, bn, relu" ×4, flatten, linear."""
    blocks = (len(params) - 2) // 4
    for i in range(blocks):
        w, b, scale, shift = params[4 * i:4 * i + 4]
        x = F.conv2d(x, w, b, stride=2, padding=1)
        x = F.batch_norm(x, None, None, scale, shift, training=True, eps=1e-5)
        x = F.relu(x)
    return F.linear(x.flatten(1), params[-2], params[-1])


class Net:
    def __init__(self, shapes, forward, loss):
        self.shapes, self.forward, self.loss = shapes, forward, loss

    def init_params(self, dtype, generator):
        """He-normal weights, zero biases, unit batch-norm scales (as mt_nn_init_params)."""
        params = []
        for role, shape in self.shapes:
            if role == "weight":
                fan_in = math.prod(shape[1:])
                t = torch.randn(shape, dtype=dtype, generator=generator) * math.sqrt(2.0 / fan_in)
            elif role == "scale":
                t = torch.ones(shape, dtype=dtype)
            else:
                t = torch.zeros(shape, dtype=dtype)
            params.append(t.requires_grad_())
        return params


def make_net(kind, ways):
    if kind == "mlp":
        return Net(mlp_shapes([1, 40, 40, 1]), mlp_forward, F.mse_loss)
    return Net(conv_shapes(1, [64] * 4, 64 * 2 * 2, ways), conv_forward, F.cross_entropy)


# ---- the meta-objective and its gradient ----------------------------------------------------

def adapt(net, theta, rates, inner_lr, x, y, steps, create_graph=True):
    """θ_{k+1} = θ_k − α ⊙ ∇L_s(θ_k), differentiable (create_graph) for second-order MAML."""
    fast = list(theta)
    for _ in range(steps):
        loss = net.loss(net.forward(fast, x), y)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        if rates is None:
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        else:
            fast = [w - a * g for w, a, g in zip(fast, rates, grads)]
    return fast


def task_objective(net, theta, rates, inner_lr, task, steps):
    xs, ys, xq, yq = task
    fast = adapt(net, theta, rates, inner_lr, xs, ys, steps)
    return net.loss(net.forward(fast, xq), yq)


def sinusoid_task(n_support, n_query, dtype, generator):
    """y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5] (as src/task/synthetic.c)."""
    u = torch.rand(2, dtype=dtype, generator=generator)
    amplitude, phase = 0.1 + 4.9 * u[0], math.pi * u[1]
    x = torch.rand(n_support + n_query, 1, dtype=dtype, generator=generator) * 10 - 5
    y = amplitude * torch.sin(x - phase)
    return x[:n_support], y[:n_support], x[n_support:], y[n_support:]


def image_task(ways, shots, queries, dtype, generator):
    ns, nq = ways * shots, ways * queries
    xs = torch.rand(ns, 1, 28, 28, dtype=dtype, generator=generator)
    xq = torch.rand(nq, 1, 28, 28, dtype=dtype, generator=generator)
    return xs, torch.arange(ns) % ways, xq, torch.arange(nq) % ways


# ---- the benchmark ----------------------------------------------------------------------------

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench(w, seconds, iterations_wanted):
    gen = torch.Generator().manual_seed(1)
    net = make_net(w["net"], w["ways"])
    theta = net.init_params(torch.float32, gen)
    rates = None
    if w["algorithm"] == "metasgd":
        rates = [torch.full_like(p, w["inner_lr"]).requires_grad_() for p in theta]
    opt = torch.optim.Adam(theta + (rates or []), lr=0.001, betas=(0.9, 0.999), eps=1e-8)
    fixed = None if w["ways"] == 0 else image_task(w["ways"], w["shots"], w["queries"], torch.float32, gen)
    B = w["meta_batch"]

    def outer_step():
        opt.zero_grad()
        for _ in range(B):
            task = fixed or sinusoid_task(w["shots"], w["queries"], torch.float32, gen)
            loss = task_objective(net, theta, rates, w["inner_lr"], task, w["steps"]) / B
            loss.backward()
        opt.step()

    if iterations_wanted:
        start = time.perf_counter()
        for _ in range(iterations_wanted):
            outer_step()
        return iterations_wanted, time.perf_counter() - start
    for phase in range(2):  # a short warm-up, then the timed run
        limit = seconds / 10 if phase == 0 else seconds
        iterations, start = 0, time.perf_counter()
        now = start
        while now - start < limit or iterations == 0:
            outer_step()
            iterations += 1
            now = time.perf_counter()
    return iterations, now - start


# ---- --check: the meta-gradient against finite differences ----------------------------------

def check_case(label, net, algorithm, steps, inner_lr, task, gen):
    theta = net.init_params(torch.float64, gen)
    with torch.no_grad():  # nonzero biases and shifts: a generic point, away from symmetries
        for p in theta:
            p.add_(0.1 * torch.randn(p.shape, dtype=torch.float64, generator=gen))
    rates = None
    if algorithm == "metasgd":
        rates = [(inner_lr * (1 + 0.5 * torch.rand(p.shape, dtype=torch.float64, generator=gen))).requires_grad_()
                 for p in theta]
    meta = theta + (rates or [])
    objective = task_objective(net, theta, rates, inner_lr, task, steps)
    grads = torch.autograd.grad(objective, meta)
    analytic = torch.cat([g.reshape(-1) for g in grads])

    def value():
        return task_objective(net, theta, rates, inner_lr, task, steps).item()

    h, numeric = 1e-6, []
    for p in meta:
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            keep = flat[i].item()
            flat[i] = keep + h
            up = value()
            flat[i] = keep - h
            down = value()
            flat[i] = keep
            numeric.append((up - down) / (2 * h))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    err = ((analytic - numeric).norm() / max(analytic.norm().item(), numeric.norm().item(), 1e-30)).item()
    ok = err < 1e-6
    print(f"{label}: {analytic.numel()} meta-parameters, relative error {err:.2e} {'ok' if ok else 'FAILED'}")
    return ok


def check():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    mlp = Net(mlp_shapes([1, 5, 4, 1]), mlp_forward, F.mse_loss)
    sine = sinusoid_task(6, 7, torch.float64, gen)
    conv = Net(conv_shapes(1, [3, 2], 2 * 2 * 2, 3), conv_forward, F.cross_entropy)
    xs = torch.rand(3, 1, 7, 7, dtype=torch.float64, generator=gen)
    xq = torch.rand(6, 1, 7, 7, dtype=torch.float64, generator=gen)
    images = (xs, torch.arange(3) % 3, xq, torch.arange(6) % 3)
    ok = check_case("MAML, MLP 1-5-4-1, 2 steps", mlp, "maml", 2, 0.05, sine, gen)
    ok &= check_case("Meta-SGD, MLP 1-5-4-1, 2 steps", mlp, "metasgd", 2, 0.05, sine, gen)
    ok &= check_case("MAML, conv-bn-relu x2 + linear, 3-way, 2 steps", conv, "maml", 2, 0.1, images, gen)
    return ok


def main():
    parser = argparse.ArgumentParser(description="PyTorch second-order MAML reference for scripts/bench.")
    parser.add_argument("workload", nargs="?", choices=sorted(WORKLOADS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--steps", type=int, help="inner steps (default: the workload's)")
    parser.add_argument("--meta-batch", type=int, help="tasks per outer step (default: the workload's)")
    parser.add_argument("--iterations", type=int, default=0, help="run exactly N outer steps, no warm-up")
    parser.add_argument("--check", action="store_true", help="meta-gradient against finite differences")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check:
        sys.exit(0 if check() else 1)
    if not args.workload:
        parser.error("name a workload or pass --check")
    if not args.seconds > 0 or args.iterations < 0:
        parser.error("--seconds must be positive and --iterations not negative")
    w = dict(WORKLOADS[args.workload])
    if args.steps:
        w["steps"] = args.steps
    if args.meta_batch:
        w["meta_batch"] = args.meta_batch
    iterations, seconds = bench(w, args.seconds, args.iterations)
    result = {"workload": args.workload, "torch_tasks_per_s": iterations * w["meta_batch"] / seconds,
              "torch_rss_mb": round(peak_rss_mb(), 1), "iterations": iterations, "seconds": round(seconds, 3)}
    if args.steps or args.meta_batch:
        result.update(steps=w["steps"], meta_batch=w["meta_batch"])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.workload}: {result['torch_tasks_per_s']:.1f} tasks/s, peak RSS {result['torch_rss_mb']:.1f} MB "
              f"({iterations} iterations in {seconds:.2f} s)")


if __name__ == "__main__":
    main()

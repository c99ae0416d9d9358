#!/usr/bin/python3
"""The PyTorch reference for `scripts/bench adapt`: adapting to one new task at inference time, then
predicting, the way learn2learn, higher and TorchOpt users write it.

usage: torch_adapt.py WORKLOAD [--seconds S] [--json]

The workloads are those of `metatrain bench adapt` (src/cli/bench.c, adapt_workloads): sinusoid,
the MLP 1-40-40-1 with MSE, 1 inner step of lr 0.01 on 10 support points, then 100 predictions;
omniglot-5w1s, the 4-conv network of torch_maml.py on 1x28x28 (batch norm on batch statistics),
3 steps of lr 0.4 on 5 images (one per class), then 75 predictions as softmax probabilities and
their argmax. Parameters are a list of tensors with the functional forward passes of
torch_maml.py. Per task: clone the parameters with requires_grad, take the inner SGD steps with
torch.autograd.grad (no create_graph: nothing differentiates through the adaptation), then the
forward on the predictions under torch.no_grad. Data are fixed uniform random numbers, as
metatrain's. One thread; a warm-up of a tenth of --seconds, then the timed loop.

Prints {workload, torch_us, torch_mean_us, torch_rss_mb, tasks} (--json: one JSON object): median
and mean microseconds per task and this process's peak RSS (getrusage ru_maxrss). Needs Debian's
python3-torch (scripts/install-deps --bench).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from torch_maml import make_net, peak_rss_mb

WORKLOADS = {
    "sinusoid": dict(net="mlp", ways=0, steps=1, support=10, predict=100, lr=0.01),
    "omniglot-5w1s": dict(net="conv4", ways=5, steps=3, support=5, predict=75, lr=0.4),
}


def bench(w, seconds):
    gen = torch.Generator().manual_seed(1)
    net = make_net(w["net"], w["ways"])
    # The meta-learned parameters of a deployed model: no gradient of their own.
    params = [p.detach() for p in net.init_params(torch.float32, gen)]
    shape = (1,) if w["net"] == "mlp" else (1, 28, 28)
    xs = torch.rand((w["support"],) + shape, generator=gen)
    xq = torch.rand((w["predict"],) + shape, generator=gen)
    ys = torch.arange(w["support"]) % w["ways"] if w["ways"] else torch.rand(w["support"], 1, generator=gen)

    def task():
        fast = [p.clone().requires_grad_() for p in params]
        for _ in range(w["steps"]):
            grads = torch.autograd.grad(net.loss(net.forward(fast, xs), ys), fast)
            fast = [p - w["lr"] * g for p, g in zip(fast, grads)]
        with torch.no_grad():
            out = net.forward(fast, xq)
            if w["ways"]:
                out = F.softmax(out, dim=1)
                out.argmax(dim=1)  # the predicted classes, as metatrain's predict returns them too
        return out

    for phase in range(2):  # a short warm-up, then the timed run
        limit = seconds / 10 if phase == 0 else seconds
        times, start = [], time.perf_counter()
        now = start
        while now - start < limit or not times:
            t0 = time.perf_counter()
            task()
            now = time.perf_counter()
            times.append(now - t0)
    return times


def main():
    parser = argparse.ArgumentParser(description="PyTorch inference-time adaptation reference for scripts/bench.")
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error("--seconds must be positive")
    torch.set_num_threads(1)
    w = WORKLOADS[args.workload]
    times = bench(w, args.seconds)
    result = {"workload": args.workload, "torch_us": round(1e6 * statistics.median(times), 3),
              "torch_mean_us": round(1e6 * statistics.fmean(times), 3), "torch_rss_mb": round(peak_rss_mb(), 1),
              "tasks": len(times), "steps": w["steps"], "support": w["support"], "predictions": w["predict"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.workload}: adapt ({w['support']} support, {w['steps']} step{'s' if w['steps'] > 1 else ''}) "
              f"+ predict {w['predict']}: "
              f"median {result['torch_us']:.1f} us, mean {result['torch_mean_us']:.1f} us per task over "
              f"{len(times)} tasks, peak RSS {result['torch_rss_mb']:.1f} MB")


if __name__ == "__main__":
    main()

"""Probe: one ConvNet training step, eager against ``torch.compile`` (inductor), on the CPU.

The evaluator's trainers run at about half the best fp32 kernel rate this machine reaches
(``bench_eval_speed.py``): the convolutions are fast, the memory-bound work between them
(instance norm, ReLU, 2×2 pooling and their backward passes) is not. Inductor fuses that work
into generated C++ loops. This probe measures what it buys on one training step of the default
ConvNet-128-3 (reference geometry, 28-px inputs) on a batch the size of an IPC-10 set, one
thread (the trainers' workers are single-threaded), interleaved rounds, before anyone builds it
into the trainer. It also reports how far the compiled step's gradients (‖Δ‖ / ‖g‖ over all of
them) are from the eager ones, and both from the same step in float64 (inductor reorders
reductions: equal up to float rounding, not bit for bit), and the one-off compile time.

    python experiments/bench_compile_step.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from _bench import RESULTS, command_line, machine, train_flops_per_image, write_json

from fedistill.models import ConvNet


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=100, help="images per step (IPC 10 × 10)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "bench_compile_step.json"))
    args = p.parse_args()
    if min(args.batch, args.steps, args.rounds, args.threads) < 1:
        p.error("--batch, --steps, --rounds and --threads must be ≥ 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ConvNet(1, 10, (28, 28), 128, 3, "instance")
    x, y = torch.randn(args.batch, 1, 28, 28), torch.arange(args.batch) % 10

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach()

    def grads_after(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        loss = fn(x, y)
        g = [p.grad.clone() for p in net.parameters()]
        net.zero_grad(set_to_none=True)
        return loss, g

    t0 = time.perf_counter()
    compiled = torch.compile(step)
    c_loss, c_grads = grads_after(compiled)
    compile_s = time.perf_counter() - t0
    e_loss, e_grads = grads_after(step)

    # Over all gradients at once: a conv bias before instance norm has a gradient of zero up to
    # rounding, so a per-tensor relative difference would compare rounding noise with itself.
    def off(grads: list[torch.Tensor], truth: torch.Tensor) -> float:
        return ((flat(grads).to(truth.dtype) - truth).norm() / truth.norm()).item()

    rel = off(c_grads, flat(e_grads))
    # The yardstick for "float rounding": both against the same step in float64.
    ref = copy.deepcopy(net).double()
    F.cross_entropy(ref(x.double()), y).backward()
    g64 = flat([p.grad for p in ref.parameters()])
    rel_eager64, rel_compiled64 = off(e_grads, g64), off(c_grads, g64)

    def timed(fn) -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            fn(x, y)
            net.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / args.steps

    timed(step)  # warm-up
    timed(compiled)
    eager, comp = [], []
    for r in range(args.rounds):
        eager.append(timed(step))
        comp.append(timed(compiled))
        print(f"round {r + 1}: eager {1e3 * eager[-1]:.1f} ms, compiled {1e3 * comp[-1]:.1f} ms")
    gflop = train_flops_per_image(net, x, y) * args.batch / 1e9
    out = {
        "benchmark": "one ConvNet-128-3 training step (forward + backward), eager vs torch.compile",
        "command": command_line(),
        "settings": {
            "model": "ConvNet-128-3, instance norm, default (reference) geometry",
            "batch": args.batch,
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "threads": args.threads,
        },
        "machine": machine(),
        "compile_seconds": compile_s,
        "loss_eager": e_loss.item(),
        "loss_compiled": c_loss.item(),
        "relative_gradient_difference": rel,
        "eager_vs_float64": rel_eager64,
        "compiled_vs_float64": rel_compiled64,
        "gflop_per_step": gflop,
        "eager_seconds": eager,
        "compiled_seconds": comp,
        "eager_gflops": gflop / statistics.median(eager),
        "compiled_gflops": gflop / statistics.median(comp),
        "speedup_median": statistics.median(e / c for e, c in zip(eager, comp)),
    }
    write_json(args.out, out)
    print(
        f"\ncommand: {out['command']}\neager {out['eager_gflops']:.0f} GFLOP/s, compiled "
        f"{out['compiled_gflops']:.0f} GFLOP/s, speedup {out['speedup_median']:.2f}× "
        f"(compile {compile_s:.0f} s; gradients: compiled vs eager {rel:.1e}, against float64 "
        f"eager {rel_eager64:.1e}, compiled {rel_compiled64:.1e})\nwrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

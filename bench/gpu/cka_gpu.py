"""GPU timing of bertrep.maths.cka.cka_profile with torch: float64 (exact) against float32 products
(float64 sums), with and without TF32, for both exact routes.

    python bench/gpu/cka_gpu.py                               # CUDA: 2 × 13 layers, n = 5,000, 768
    python bench/gpu/cka_gpu.py --n 500 --width 64 --layers 4  # CPU smoke run

Needs only numpy and torch: bertrep is imported from src/ (no install). Inputs are made
on the device and stored float16. Each timing is the median of --repeats runs after
--warmup runs, with torch.cuda.synchronize() around each. Differences are max |Δ| against
the float64 result of the same route; the two float64 routes are also compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from bertrep.maths.cka import cka_profile, profile_flops  # noqa: E402

MODES = {"fp64": ("float64", False), "fp32": ("float32", False), "tf32": ("float32", True)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="fp64,fp32,tf32", help=f"comma list of {list(MODES)}")
    p.add_argument("--routes", default="gram,feature")
    p.add_argument("--debiased", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def two_models(args, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, n, width) float16 residual streams; model b's updates echo model a's."""
    g = torch.Generator(device=device).manual_seed(args.seed)

    def randn():
        return torch.randn(args.n, args.width, generator=g, device=device)

    a = randn()
    b = a + 0.3 * randn()
    out_a, out_b = [], []
    for _ in range(args.layers):
        update = randn()
        a = a + 0.6 * update
        b = b + 0.6 * (0.8 * update + 0.6 * randn())
        out_a.append((a + 1.5).half())
        out_b.append((b - 0.5).half())
    return torch.stack(out_a), torch.stack(out_b)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, repeats: int):
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# cka_profile on {name} (torch {torch.__version__}): 2 models × {args.layers} "
          f"layers, n = {args.n}, width {args.width}, float16 storage, "
          f"debiased={args.debiased}")  # fmt: skip
    xs, ys = two_models(args, device)
    flops = profile_flops(args.n, [args.width] * args.layers, [args.width] * args.layers)
    print(f"arithmetic: gram {flops['gram'] / 1e9:.0f} GFLOP, feature "
          f"{flops['feature'] / 1e9:.0f} GFLOP (no symmetric product in torch: the gram "
          "route's diagonal tiles cost double)")  # fmt: skip
    print(f"{'route':8s} {'mode':5s} {'median ms':>10s} {'max|Δ| vs fp64':>15s}")
    saved = torch.backends.cuda.matmul.allow_tf32
    exact = {}
    try:
        for route in args.routes.split(","):
            for mode in args.modes.split(","):
                dtype, tf32 = MODES[mode]
                torch.backends.cuda.matmul.allow_tf32 = tf32
                seconds, out = timed(
                    lambda r=route, d=dtype: cka_profile(
                        xs, ys, debiased=args.debiased, route=r, dtype=d
                    ),
                    device, args.warmup, args.repeats,
                )  # fmt: skip
                exact.setdefault(route, out)
                diff = abs(out - exact[route]).max()
                print(f"{route:8s} {mode:5s} {seconds * 1e3:10.2f} {diff:15.2e}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    if len(exact) == 2:
        print(f"fp64 gram vs feature: max|Δ| = {abs(exact['gram'] - exact['feature']).max():.2e}")
    print(f"profile[0, :3] = {exact[next(iter(exact))][0, :3].round(4).tolist()}")


if __name__ == "__main__":
    main()

"""Benchmark of bertrep.maths.cka: one full layer-by-layer CKA profile, against the per-pair method
of the original paper code (float32 and float64) and the CKA libraries on PyPI, plus
streaming memory.

    python bench/cka.py            # 2 models × 13 hidden states, n = 5,000, width 768, float16
    python bench/cka.py --quick    # smoke setting, seconds

On the same inputs it prints the time of a full profile by
- `cka_profile` (route chosen by shape; and each route forced, and float32 products),
- the baseline: for every pair, the original code's feature-space linear CKA
  (Kornblith et al., google-research/representation_similarity): centre both,
  XᵀY, XᵀX, YᵀY, Frobenius norms, float64,
- ckatorch (`cka_base`: exact Gram-space CKA, one pair at a time, timed on a sample
  of pairs and scaled to all; `cka_batch`: minibatch HSIC₁ of Nguyen et al.),
- cka-pytorch (minibatch HSIC₁ as in `CKACalculator`, float32 Grams, epsilon 1e-4),
  if its `hsic` module can be found (the package's own imports need lightning,
  torchmetrics and torchvision, so only that module is loaded);
with ratios and max |difference| to ours; the float64 GEMM rate measured in the same
run, the arithmetic lower bound of our route at that rate, and the peak memory
(ru_maxrss of a child process) of StreamingCKA over --stream-rows rows generated
chunk by chunk.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bertrep.maths import cka
from bertrep.maths import cka_backend as cka_ops
from bertrep.maths.cka import StreamingCKA, cka_profile, profile_flops  # noqa: E402

FULL = {"n": 5000, "width": 768, "layers": 13, "stream_rows": 1_000_000, "stream_layers": 2}
QUICK = {"n": 600, "width": 64, "layers": 4, "stream_rows": 50_000, "stream_layers": 2}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke setting: " + str(QUICK))
    p.add_argument("--n", type=int, help=f"rows (tokens); default {FULL['n']}")
    p.add_argument("--width", type=int, help=f"hidden width; default {FULL['width']}")
    p.add_argument("--layers", type=int, help=f"hidden states per model; default {FULL['layers']}")
    p.add_argument("--stream-rows", type=int, help=f"default {FULL['stream_rows']}")
    p.add_argument("--stream-layers", type=int, help="layers per model when streaming; default 2")
    p.add_argument("--stream-chunk", type=int, default=8192, help="rows per streamed chunk")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of ours; best is kept")
    p.add_argument("--lib-pairs", type=int, default=6, help="pairs timed for ckatorch cka_base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- inputs


def two_models(args) -> tuple[np.ndarray, np.ndarray]:
    """Two (layers, n, width) float16 residual streams: each layer adds an update to the
    last, so near layers are alike; model b's updates are noisy copies of model a's (two
    fine-tunes of one encoder). Offsets and uneven column scales as in real encoders."""
    rng = np.random.default_rng(args.seed)
    shape = (args.n, args.width)
    scale = np.exp(rng.normal(0, 0.5, args.width)).astype(np.float32)
    a = rng.standard_normal(shape, dtype=np.float32)
    b = a + 0.3 * rng.standard_normal(shape, dtype=np.float32)
    out_a, out_b = [], []
    for _ in range(args.layers):
        update = rng.standard_normal(shape, dtype=np.float32)
        a += 0.6 * update
        b += 0.6 * (0.8 * update + 0.6 * rng.standard_normal(shape, dtype=np.float32))
        out_a.append((a * scale + 1.5).astype(np.float16))
        out_b.append((b * scale - 0.5).astype(np.float16))
    return np.stack(out_a), np.stack(out_b)


# --------------------------------------------------------------------------- timing


def best_time(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gemm_rate(dtype: str = "float64") -> float:
    """GFLOP/s of a 4096³ matrix product in `dtype`, best of 3."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4096, 4096)).astype(dtype) for _ in range(2))
    seconds, _ = best_time(lambda: a @ b, 3)
    return 2 * 4096**3 / seconds / 1e9


# --------------------------------------------------------------------------- methods


def paper_per_pair(xs64: list, ys64: list) -> np.ndarray:
    """Kornblith et al.'s feature_space_linear_cka (biased), once per layer pair."""

    def feature_space_linear_cka(features_x, features_y):
        features_x = features_x - np.mean(features_x, 0, keepdims=True)
        features_y = features_y - np.mean(features_y, 0, keepdims=True)
        dot_product_similarity = np.linalg.norm(features_x.T.dot(features_y)) ** 2
        normalization_x = np.linalg.norm(features_x.T.dot(features_x))
        normalization_y = np.linalg.norm(features_y.T.dot(features_y))
        return dot_product_similarity / (normalization_x * normalization_y)

    return np.array([[feature_space_linear_cka(x, y) for y in ys64] for x in xs64])


def minibatch_size(n: int) -> int:
    """Largest batch ≤ 256 dividing n, so every minibatch has equal size."""
    return max(d for d in range(4, min(n, 256) + 1) if n % d == 0)


def ckatorch_rows(xs, ys, args, lines):
    """ckatorch: exact cka_base on a sample of pairs; minibatch cka_batch on all pairs."""
    try:
        import ckatorch
        import torch
    except ImportError as e:
        lines.append(f"ckatorch: not importable ({e}); skipped")
        return []
    rows = []
    tx = [torch.from_numpy(x) for x in xs]
    ty = [torch.from_numpy(y) for y in ys]
    pairs = [(i, i) for i in np.linspace(0, len(xs) - 1, args.lib_pairs).astype(int)]
    seconds, vals = best_time(
        lambda: [float(ckatorch.cka_base(tx[i], ty[j], kernel="linear")) for i, j in pairs]
    )
    scale = len(xs) * len(ys) / len(pairs)
    rows.append(("ckatorch cka_base (exact, float64)", seconds * scale, vals, pairs, "biased",
                 f"timed on {len(pairs)} pairs ×{scale:.1f}"))  # fmt: skip
    b = minibatch_size(args.n)
    bx = [t.reshape(-1, b, t.shape[1]) for t in tx]
    by = [t.reshape(-1, b, t.shape[1]) for t in ty]
    all_pairs = [(i, j) for i in range(len(xs)) for j in range(len(ys))]
    seconds, vals = best_time(
        lambda: [float(ckatorch.cka_batch(bx[i], by[j])) for i, j in all_pairs]
    )
    rows.append(("ckatorch cka_batch (minibatch HSIC1)", seconds, vals, all_pairs, "debiased",
                 f"{args.n // b} batches of {b} rows, float64"))  # fmt: skip
    return rows


def cka_pytorch_rows(xs, ys, args, lines):
    """cka-pytorch's CKACalculator arithmetic on stored activations: per minibatch, float32
    Grams of every layer, hsic1 of all pairs in groups of 64, summed; then epsilon 1e-4."""
    spec = importlib.util.find_spec("cka_pytorch")
    if spec is None or not spec.submodule_search_locations:
        lines.append("cka-pytorch: not installed; skipped")
        return []
    import torch

    path = Path(next(iter(spec.submodule_search_locations))) / "hsic.py"
    hsic_spec = importlib.util.spec_from_file_location("cka_pytorch_hsic", path)
    hsic = importlib.util.module_from_spec(hsic_spec)
    hsic_spec.loader.exec_module(hsic)
    b, lx, ly = minibatch_size(args.n), len(xs), len(ys)

    def run():
        self_x, self_y = torch.zeros(lx), torch.zeros(ly)
        cross = torch.zeros(lx * ly)
        for r0 in range(0, args.n, b):
            gx = [torch.from_numpy(x[r0 : r0 + b]).float() for x in xs]
            gy = [torch.from_numpy(y[r0 : r0 + b]).float() for y in ys]
            gx, gy = [g @ g.T for g in gx], [g @ g.T for g in gy]
            self_x += hsic.hsic1(torch.stack(gx), torch.stack(gx))
            self_y += hsic.hsic1(torch.stack(gy), torch.stack(gy))
            for k0 in range(0, lx * ly, 64):
                ks = range(k0, min(k0 + 64, lx * ly))
                cross[k0 : ks[-1] + 1] += hsic.hsic1(
                    torch.stack([gx[k % lx] for k in ks]), torch.stack([gy[k // lx] for k in ks])
                )
        out = cross.reshape(ly, lx).T / torch.sqrt(torch.outer(self_x, self_y) + 1e-4)
        return out.double().numpy()

    with torch.no_grad():
        seconds, profile = best_time(run)
    pairs = [(i, j) for i in range(lx) for j in range(ly)]
    vals = [profile[i, j] for i, j in pairs]
    note = f"{args.n // b} batches of {b} rows, float32 Grams ({path.parent})"
    return [("cka-pytorch (minibatch HSIC1)", seconds, vals, pairs, "debiased", note)]


# --------------------------------------------------------------------------- streaming


def peak_rss_kib() -> dict[str, int]:
    """Peak resident set size so far: ru_maxrss, and VmHWM, which unlike ru_maxrss is not
    carried over from the parent through fork and exec (Linux)."""
    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["VmHWM"] = int(line.split()[1])
    return out


def stream_child(args) -> None:
    """Runs in its own process so the peak RSS is the streaming peak; prints one JSON line."""
    before = peak_rss_kib()
    rng = np.random.default_rng(args.seed)
    w, lz = args.width, args.stream_layers
    scale = np.exp(rng.normal(0, 0.5, w)).astype(np.float32)
    stream = StreamingCKA(debiased=True)
    making = in_cka = 0.0
    for r0 in range(0, args.stream_rows, args.stream_chunk):
        t = time.perf_counter()
        m = min(args.stream_chunk, args.stream_rows - r0)
        # Chunks are made on the fly, so the n rows never exist at once: a shared part
        # and one noise draw, column-rolled differently for each layer.
        base = rng.standard_normal((m, w), dtype=np.float32)
        noise = rng.standard_normal((m, w), dtype=np.float32)
        layers = [
            ((base + (0.5 + k) * np.roll(noise, 97 * k, axis=1)) * scale + 1.5).astype(np.float16)
            for k in range(2 * lz)
        ]
        t1 = time.perf_counter()
        stream.update(layers[:lz], layers[lz:])
        making, in_cka = making + t1 - t, in_cka + time.perf_counter() - t1
    t = time.perf_counter()
    profile = stream.result()
    in_cka += time.perf_counter() - t
    result = {"seconds": in_cka, "making": making, "peak_kib": peak_rss_kib(),
              "before_kib": before, "profile": profile.tolist(), "n": stream.n}  # fmt: skip
    print(json.dumps(result))


def stream_memory(args) -> dict:
    cmd = [sys.executable, __file__, "--stream-child", "--width", str(args.width),
           "--stream-rows", str(args.stream_rows), "--stream-layers", str(args.stream_layers),
           "--stream-chunk", str(args.stream_chunk), "--seed", str(args.seed)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def streaming_report(args) -> list[str]:
    """Peak memory of StreamingCKA in a child process started while this one is still small
    (ru_maxrss is inherited through fork)."""
    res = stream_memory(args)
    gib = 2**20
    peak, before = res["peak_kib"], res["before_kib"]
    acc = accumulator_gib(args.stream_layers, args.width)
    return [
        f"StreamingCKA (debiased), {res['n']:,} rows × width {args.width}, 2 models × "
        f"{args.stream_layers} layers, chunks of {args.stream_chunk} rows generated on the fly: "
        f"{res['seconds']:.1f} s in update/result (+ {res['making']:.1f} s making the data)",
        f"  peak RSS of the child process: VmHWM {peak.get('VmHWM', 0) / gib:.2f} GiB, "
        f"ru_maxrss {peak['ru_maxrss'] / gib:.2f} GiB (after imports: VmHWM "
        f"{before.get('VmHWM', 0) / gib:.2f} GiB); float64 accumulators {acc:.3f} GiB "
        "(target: peak < 2 GiB)",
        f"  the accumulators for 2 × {args.layers} layers of width {args.width} would take "
        f"{accumulator_gib(args.layers, args.width):.2f} GiB, whatever n",
        f"  profile: {np.round(res['profile'], 4).tolist()}",
    ]


def accumulator_gib(layers: int, width: int) -> float:
    """float64 state of StreamingCKA for 2 models: XᵀY, each layer's XᵀX, and vectors."""
    p = layers * width
    return (p * p + 2 * layers * width**2 + 6 * p * layers) * 8 / 2**30


def breakdown(xs, ys) -> dict[str, float]:
    """Seconds of one default (gram-route) profile in each of its parts: centring (and the
    casts), the Gram tiles' products, the tiles' inner products, everything else."""
    spent = {"centring": 0.0, "gram tiles": 0.0, "tile inner products": 0.0}
    parts = [(cka, "_centre", "centring"), (cka_ops._NumpyOps, "matmul", "gram tiles"),
             (cka_ops._NumpyOps, "tile_products", "tile inner products")]  # fmt: skip
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in parts]

    def timed(fn, part):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[part] += time.perf_counter() - t

        return wrapper

    for (owner, name, fn), (_, _, part) in zip(saved, parts, strict=True):
        setattr(owner, name, timed(fn, part))
    try:
        t = time.perf_counter()
        cka_profile(xs, ys)
        total = time.perf_counter() - t
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return spent | {"rest": total - sum(spent.values()), "total": total}


def main() -> None:
    args = parse_args()
    if args.stream_child:
        stream_child(args)
        return
    started = time.perf_counter()
    stream_lines = streaming_report(args)
    lx = ly = args.layers
    print(f"# CKA profile benchmark: 2 models × {args.layers} hidden states, n = {args.n}, "
          f"width {args.width}, stored float16")  # fmt: skip
    xs, ys = two_models(args)
    widths = [args.width] * args.layers
    flops = profile_flops(args.n, widths, widths)
    route = min(flops, key=flops.__getitem__)
    rate_before = gemm_rate("float32")

    # ours: the default (float16 inputs -> float32 products of float64-centred tiles,
    # float64 sums); exact: the same route in float64 throughout, the accuracy reference
    ours_s, ours = best_time(lambda: cka_profile(xs, ys), args.repeats)
    rows, cka._TILE_ROWS = cka._TILE_ROWS, 1 << 30  # tiles as large as _TILE_BYTES allows
    try:
        big_s, big = best_time(lambda: cka_profile(xs, ys), args.repeats)
    finally:
        cka._TILE_ROWS = rows
    f64_s, exact = best_time(lambda: cka_profile(xs, ys, dtype="float64"))
    other = "feature" if route == "gram" else "gram"
    other_s, other_profile = best_time(lambda: cka_profile(xs, ys, route=other))
    deb_s, ours_deb = best_time(lambda: cka_profile(xs, ys, debiased=True))

    as32 = ([x.astype(np.float32) for x in xs], [y.astype(np.float32) for y in ys])
    base32_s, base32 = best_time(functools.partial(paper_per_pair, *as32))
    as64 = ([x.astype(np.float64) for x in as32[0]], [y.astype(np.float64) for y in as32[1]])
    del as32
    base_s, base = best_time(functools.partial(paper_per_pair, *as64))
    del as64
    lines: list[str] = []
    libs = ckatorch_rows(xs, ys, args, lines) + cka_pytorch_rows(xs, ys, args, lines)
    rate_after = gemm_rate("float32")
    rate = max(rate_before, rate_after)

    lower = flops[route] / (rate * 1e9)
    print(f"float32 GEMM rate (4096³, best of 3, before/after): {rate_before:.1f} / "
          f"{rate_after:.1f} GFLOP/s; used: {rate:.1f}; float64: "
          f"{gemm_rate('float64'):.1f} GFLOP/s")  # fmt: skip
    print(f"route flops: gram {flops['gram'] / 1e9:.0f} GFLOP, feature "
          f"{flops['feature'] / 1e9:.0f} GFLOP -> auto picks {route}")  # fmt: skip
    print()
    print(f"{'method':48s} {'time (s)':>9s} {'÷ ours':>8s} {'max|Δ| vs ours':>15s}  note")

    def row(name, seconds, diff, note=""):
        print(f"{name:48s} {seconds:9.2f} {seconds / ours_s:8.2f} {diff:15.2e}  {note}")

    work = "float32" if route == "gram" else "float64"  # dtype="auto" on float16 inputs
    row(f"ours cka_profile (default: {route}, {work})", ours_s, 0.0,
        f"best of {args.repeats}; biased; sums in float64")  # fmt: skip
    big_rows, rows = (cka.tile_rows(args.n, 2 * lx, 4, cap) for cap in (1 << 30, None))
    tiles = f"tiles of {big_rows} rows, not {rows}"
    if route == "gram":
        row(f"ours, {tiles}", big_s, np.abs(big - ours).max(),
            f"best of {args.repeats}; the tiling before 2026-12-02")  # fmt: skip
    row(f"ours {route}, dtype=float64", f64_s, np.abs(exact - ours).max())
    row(f"ours route={other} (float64)", other_s, np.abs(other_profile - ours).max())
    row(f"ours debiased (auto = {route})", deb_s, 0.0, "vs itself")
    row("baseline: paper code per pair, float32", base32_s, np.abs(base32 - ours).max(),
        f"{lx * ly} pairs, layers pre-cast to float32 (untimed)")  # fmt: skip
    row("baseline: paper code per pair, float64", base_s, np.abs(base - ours).max(),
        f"{lx * ly} pairs, layers pre-cast to float64 (untimed)")  # fmt: skip
    for name, seconds, vals, pairs, kind, note in libs:
        ref = ours if kind == "biased" else ours_deb
        diff = max(abs(v - ref[i, j]) for v, (i, j) in zip(vals, pairs, strict=True))
        row(name, seconds, diff, f"vs ours {kind}; {note}")
    for line in lines:
        print(line)
    print()
    print(f"speed-up over the per-pair float32 baseline: {base32_s / ours_s:.2f}× "
          f"(target ≥ 3×); over the float64 one: {base_s / ours_s:.2f}×")  # fmt: skip
    print(
        f"max |ours − float64|: {np.abs(exact - ours).max():.2e} (ours dtype=float64), "
        f"{np.abs(base - ours).max():.2e} (per-pair float64 baseline) (target ≤ 1e-6)"
    )
    print(f"arithmetic lower bound ({route} route, {flops[route] / 1e9:.0f} GFLOP at "
          f"{rate:.1f} GFLOP/s): {lower:.2f} s; ours / bound = {ours_s / lower:.2f} "
          "(target ≤ 1.5)")  # fmt: skip
    parts = breakdown(xs, ys)
    gram_flops = args.n**2 * (sum(widths) * 2)  # n²p per layer (symmetric Grams)
    print("where one default profile's time goes: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in parts.items()) + f"; the Gram tiles at "
        f"{gram_flops / parts['gram tiles'] / 1e9:.1f} GFLOP/s of their n²p flops")  # fmt: skip

    print()
    for line in stream_lines:
        print(line)
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

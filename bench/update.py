"""Where one training update of a sweep trial goes, on one CPU thread (as a trial runs):
MiniLM (the quick setting's model) with a batch of 16 sequences of 48 tokens, forward,
backward and the fused AdamW step, profiled by operator, against the thread's matrix
multiply rate (float32 GEMM of the update's own shapes and of 2048³).

    python bench/update.py              # MiniLM, batch 16 × 48 tokens
    python bench/update.py --tiny       # a tiny random BERT, seconds

The update's multiply-add count is counted from the model's shapes: per token and block
4·h² (query, key, value, output) + 2·h·i (feed-forward) multiply-adds forward, attention
scores and values 2·t·h more, times 3 for forward + backward; the head and embeddings
are left out (a lower bound on the arithmetic).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rate(fn, flop: float, repeats: int = 5) -> float:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return flop / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--updates", type=int, default=20, help="best of this many")
    args = p.parse_args()
    torch.set_num_threads(1)
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModel

    from bertrep.training.model import minilm_path

    if args.tiny:
        import tempfile

        from train import tiny_bert  # bench/train.py

        path, args.updates = tiny_bert(Path(tempfile.mkdtemp()) / "tiny"), 3
    else:
        path = minilm_path()
    name = "tiny random BERT" if args.tiny else "MiniLM (all-MiniLM-L6-v2)"
    model = AutoModel.from_pretrained(path)
    model.train()
    cfg = model.config
    h, i, layers, b, t = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                          args.batch, args.tokens)  # fmt: skip
    x = torch.randint(1000, 5000, (b, t))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def update() -> None:
        model(input_ids=x).last_hidden_state.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_backward() -> None:
        model(input_ids=x).last_hidden_state.float().pow(2).mean().backward()
        optimizer.zero_grad(set_to_none=True)

    update()
    seconds = min(_timed(update) for _ in range(args.updates))
    fb = min(_timed(forward_backward) for _ in range(args.updates))
    macs = layers * b * t * (4 * h * h + 2 * h * i + 2 * t * h)
    flop = 2 * 3 * macs  # forward + backward (two products per forward one)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            update()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values())
    matmul = sum(v for k, v in ops.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    a, w = torch.randn(b * t, h), torch.randn(h, i)
    big = torch.randn(2048, 2048)
    shape_rate = rate(lambda: a @ w, 2 * b * t * h * i, repeats=20)
    big_rate = rate(lambda: big @ big, 2 * 2048**3)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# one training update on one thread, {when}: {name}, {layers} blocks "
          f"of width {h} (feed-forward {i}), batch {b} × {t} tokens")  # fmt: skip
    print(
        f"update (forward, backward, AdamW): {seconds:.3f} s; forward + backward alone {fb:.3f} s"
    )
    print(f"arithmetic of the blocks: {flop / 1e9:.1f} GFLOP -> {flop / seconds / 1e9:.1f} "
          "GFLOP/s over the whole update")  # fmt: skip
    print(f"matrix multiplies: {matmul / total:.0%} of the profiled time")
    print(f"float32 GEMM on this thread: {shape_rate:.1f} GFLOP/s at ({b * t} × {h}) @ "
          f"({h} × {i}), {big_rate:.1f} GFLOP/s at 2048³")  # fmt: skip
    print("by operator (self time, share of the profile):")
    for key, value in sorted(ops.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {key:28s} {value / total:6.1%}")


if __name__ == "__main__":
    main()

"""Frozen-prefix cache: training throughput with the prefix recomputed at every step
versus computed once, side by side in one run, on the same data and model.

    python bench/prefix.py --data_dir ../shared/data            # MiniLM, SST-2, k = 0, 3, 6
    python bench/prefix.py --data_dir ../shared/data --quick    # a smoke setting

Each run is a real `bertrep.train.run` into a throwaway MLflow store; examples/s
counts update steps only (the one-off prefix pass is in the wall time). The cache is
built only when a run reads at least one epoch (steps x batch >= training examples),
so the default setting reads 1,280 examples of 1,000.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", default=os.environ.get("BERTREP_DATA_DIR", ""))
    parser.add_argument("--base_model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--frozen", default="0,3,6")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train_examples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.train_examples, args.frozen = 5, 200, "0,6"

    args.data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else ""
    tmp = tempfile.mkdtemp(prefix="bench-prefix-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    os.chdir(tmp)
    import mlflow
    import torch

    from bertrep import tracking
    from bertrep.train import run
    from bertrep.training import prefix
    from bertrep.training.config import Runtime, TrainConfig

    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"# {args.base_model} on {args.task}: {args.steps} updates of batch 32 over "
        f"{args.train_examples} training examples"
    )
    # One throwaway run first: first-call costs (allocator, kernels, data cache) are not
    # the cache's doing.
    warm = dict(task=args.task, base_model=args.base_model, data_dir=args.data_dir)
    run(TrainConfig(**warm, max_steps=3, max_train_examples=args.train_examples,
                    max_eval_examples=50, probe_tokens=100, save_checkpoint=False),
        Runtime(progress=False))  # fmt: skip
    print(f"{'k':>3} {'cache':>6} {'examples/s':>11} {'wall s':>8} {'speed-up':>9}")
    for k in (int(x) for x in args.frozen.split(",")):
        cfg = TrainConfig(
            task=args.task, base_model=args.base_model, frozen_layers=k, lr=1e-4,
            max_steps=args.steps, max_train_examples=args.train_examples,
            max_eval_examples=200, probe_tokens=500, data_dir=args.data_dir,
            save_checkpoint=False,
        )  # fmt: skip
        rates = []
        for gb in (0.0, 4.0):
            prefix.clear()
            start = time.perf_counter()
            run_id = run(cfg, Runtime(progress=False, prefix_cache_gb=gb, prefix_disk_gb=0.0))
            wall = time.perf_counter() - start
            rate = mlflow.get_run(run_id).data.metrics[tracking.THROUGHPUT]
            rates.append(rate)
            ratio = f"{rate / rates[0]:8.2f}x" if gb else ""
            print(f"{k:>3} {'on' if gb else 'off':>6} {rate:11.1f} {wall:8.1f} {ratio:>9}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

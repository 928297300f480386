"""Head-only trials (k = L frozen) at several budgets: do they converge, and what does
a budget cost? The measurement behind the frozen-trial recipe (docs/training.md).

    python bench/convergence.py --data_dir ../shared/data                 # the record
    python bench/convergence.py --data_dir ../shared/data --quick         # a smoke setting

For each task and budget (learning rate, updates) it trains the pretrained encoder's
new head with every layer frozen, once per seed, on the quick study's 2,000-example
training subsample, and scores it on the first `--eval` examples of the dev split.
Printed per task and budget: mean and standard deviation of the score over seeds, the
mean wall time of a trial, and how far the mean moved from the budget with half the
updates, in units of that budget's seed deviation (the analysis' convergence check:
below 1 is converged). Scores are raw metrics: the normalized score is a fixed affine
map of them, so the ratio is the same. The frozen prefix is computed once per task
(the disk cache) and counted in the first trial's wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", default=os.environ.get("BERTREP_DATA_DIR", ""))
    parser.add_argument("--base_model", default="minilm")
    parser.add_argument("--tasks", default="mnli,stsb,sst2,pos")
    # lr:updates budgets; a budget with twice the updates of another at the same lr is
    # compared with it
    parser.add_argument("--budgets", default="1e-4:100,1e-3:250,1e-3:500,1e-3:1000,1e-3:2000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_examples", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=1000)
    # early stopping: patience in scores of the held-out tenth, every `eval_every` updates
    parser.add_argument("--early_stopping", type=int, default=0)
    parser.add_argument("--eval_every", type=int, default=0)
    parser.add_argument("--schedule", default="linear")  # after warm-up: linear | constant
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.budgets, args.seeds = "sst2", "1e-3:5,1e-3:10", "0,1"
        args.train_examples, args.eval = 64, 32
    args.data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else ""
    tmp = tempfile.mkdtemp(prefix="bench-convergence-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    os.environ.setdefault("BERTREP_CACHE_DIR", f"{tmp}/cache")
    os.chdir(tmp)
    import mlflow
    import torch

    from bertrep import tracking
    from bertrep.data.tasks import get_task
    from bertrep.train import run
    from bertrep.training.config import Runtime, TrainConfig
    from bertrep.training.model import load_model
    from bertrep.training.stopping import BEST_STEP

    layers = load_model(args.base_model, ["sst2"])[0].num_layers
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"# {args.base_model}, k = {layers} (head only), batch 16, {args.train_examples} "
        f"training examples, first {args.eval} dev examples, seeds {args.seeds}"
        + (f"; early stopping: patience {args.early_stopping} scores every {args.eval_every} "
           "updates on a held-out tenth of the training examples" if args.early_stopping else "")
        + f"; warm-up {args.warmup_ratio:g}, then {args.schedule}"
    )  # fmt: skip
    print(f"{'task':<6} {'lr':>7} {'updates':>8} {'mean':>7} {'sd':>6} {'wall s':>7} "
          f"{'move/sd':>8}  scores")  # fmt: skip
    budgets = [(float(lr), int(n)) for lr, n in (b.split(":") for b in args.budgets.split(","))]
    for task in args.tasks.split(","):
        metric = get_task(task).metric
        means: dict[tuple[float, int], float] = {}
        for lr, steps in budgets:
            scores, walls, stops = [], [], []
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = TrainConfig(
                    task=task, base_model=args.base_model, frozen_layers=layers, lr=lr,
                    max_steps=steps, batch_size=16, max_length=64, seed=seed,
                    max_train_examples=args.train_examples, max_eval_examples=args.eval,
                    probe_tokens=100, data_dir=args.data_dir, save_checkpoint=False,
                    diverge_margin=0.0, best_score=1.0, early_stopping=args.early_stopping,
                    eval_every=args.eval_every, schedule=args.schedule,
                    warmup_ratio=args.warmup_ratio,
                )  # fmt: skip
                start = time.perf_counter()
                run_id = run(cfg, Runtime(progress=False, reuse_tables=False))
                walls.append(time.perf_counter() - start)
                metrics = mlflow.get_run(run_id).data.metrics
                scores.append(metrics[tracking.eval_metric(metric)])
                stops.append(int(metrics.get(BEST_STEP, steps)))
            mean, sd = statistics.mean(scores), statistics.stdev(scores)
            means[(lr, steps)] = mean
            half = means.get((lr, steps // 2))
            move = f"{abs(mean - half) / sd:8.2f}" if half is not None and sd > 0 else " " * 8
            print(f"{task:<6} {lr:7.0e} {steps:8d} {mean:7.3f} {sd:6.3f} "
                  f"{statistics.mean(walls):7.1f} {move}  "
                  + " ".join(f"{s:.3f}" for s in scores)
                  + (f"  best at {stops}" if args.early_stopping else ""), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

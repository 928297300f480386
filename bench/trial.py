"""Where a quick AuFC trial's wall time goes: one trial of each kind the quick AuFC sweep
runs, in one process on one torch thread (as a sweep trial runs), timed by phase.

    python bench/trial.py             # the quick AuFC settings (MiniLM, 100 updates of 16)
    python bench/trial.py --steps 10  # the same phases, shorter

Trials: a source (SST-2 from the pretrained model, k = 0, read out on all four probe
sets, logged as an MLflow Model and registered), then STS-B from that source with k = 0,
3 and 6 frozen blocks (read out on STS-B's probe set). Each runs `train.run` under
cProfile into a throwaway SQLite store (no server); the phases are the cumulative times
of bertrep's functions, "other" the rest of the run's wall (MLflow run start and end,
tags, params, the artifact bytes). The first trial also pays the process's imports and
the first tokenization of each split (later trials of a worker find them cached).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# (label, bertrep function): the phases of train.run, in the order a run meets them
PHASES = [
    ("model load", "training/model.py", "load_model"),
    ("data load + tokenize", "training/loop.py", "load_task_data"),
    ("probe sets", "training/readout.py", "probe_sets"),
    ("probe tables + inputs", "training/readout.py", "log_probe_tables"),
    ("updates", "training/loop.py", "optimise"),
    ("evaluation", "training/loop.py", "log_eval"),
    ("activations", "training/readout.py", "log_activations"),
    ("model / checkpoint", "train.py", "log_checkpoint"),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument(
        "--data_dir",
        default=os.environ.get("BERTREP_DATA_DIR", str(REPO.parent / "shared" / "data")),
    )
    p.add_argument("--model", default="minilm")
    return p.parse_args()


def phase_times(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = {}
    for label, file, name in PHASES:
        hits = [
            cumulative
            for (path, _, function), (_, _, _, cumulative, _) in stats.items()
            if path.endswith(f"bertrep/{file}") and function == name
        ]
        out[label] = max(hits, default=0.0)
    return out


def configs(args: argparse.Namespace) -> list[tuple[str, object]]:
    """(label, config factory): the source first, its transfers once it is registered."""
    from bertrep.tracking import registry
    from bertrep.training.config import TrainConfig

    common = dict(base_model=args.model, batch_size=16, lr=1e-4, max_steps=args.steps,
                  max_length=64, max_train_examples=2000, max_eval_examples=300,
                  probe_tokens=2000, data_dir=args.data_dir)  # fmt: skip
    source = TrainConfig(task="sst2", probe_tasks="mnli,stsb,sst2,pos", **common)

    def transfer(k: int) -> TrainConfig:
        uri = registry.find_source("sst2", source.key())
        values = common | {"base_model": uri, "save_checkpoint": False}
        return TrainConfig(task="stsb", source_task="sst2", frozen_layers=k, **values)

    out = [("sst2 from base, k=0 (source)", lambda: source)]
    return out + [(f"stsb from sst2, k={k}", lambda k=k: transfer(k)) for k in (0, 3, 6)]


def cell(seconds: float, wall: float) -> str:
    return f"{seconds:>14.1f}s ({seconds / wall:>4.0%})"


def main() -> None:
    args = parse_args()
    store = tempfile.mkdtemp(prefix="bench-trial-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("BERTREP_CACHE_DIR", f"{store}/cache")  # tokenize from scratch
    began = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from bertrep import train
    from bertrep.training.config import Runtime

    print(f"imports {time.perf_counter() - began:.1f}s; torch threads 1; store {store}")
    rows = []
    for label, make in configs(args):
        cfg = make()
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        train.run(cfg, Runtime(progress=False))
        profile.disable()
        rows.append((label, time.perf_counter() - start, phase_times(profile)))
        print(f"  {label}: {rows[-1][1]:.1f}s", flush=True)
    width = max(len(label) for label, _, _ in PHASES) + 2
    print(f"\n{'phase':<{width}}" + "".join(f"{r[0][:24]:>24}" for r in rows))
    for label, _, _ in PHASES:
        print(f"{label:<{width}}" + "".join(cell(r[2][label], r[1]) for r in rows))
    print(f"{'other':<{width}}" + "".join(cell(r[1] - sum(r[2].values()), r[1]) for r in rows))
    print(f"{'wall':<{width}}" + "".join(cell(r[1], r[1]) for r in rows))
    outside = ", ".join(f"{1 - r[2]['updates'] / r[1]:.0%}" for r in rows)
    print(f"\noutside the updates: {outside} of each trial's wall")


if __name__ == "__main__":
    main()

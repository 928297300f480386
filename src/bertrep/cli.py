"""The `bertrep` command: one subcommand per stage, each the stage's own command line.

    bertrep --help                                  # the stages, one line each
    bertrep train --task sst2 --max_steps 60 --lr 1e-4
    bertrep sweep --spec sweeps/quick/aufc.yaml --resume
    bertrep analyze --spec analysis/quick.yaml
    bertrep figures --out figures
    bertrep study --setting smoke
    bertrep tasks --data_dir ../shared/data
    bertrep data ~/data/bertrep

`bertrep STAGE ...` is `python -m bertrep.STAGE ...` (which keeps working, as do the
MLproject entry points that run it): the same function, the same flags. `bertrep data`
is `python -m bertrep.data`.
"""

from __future__ import annotations

import importlib
import sys

# stage -> (module whose main() it runs, one line saying what it does)
STAGES = {
    "train": ("bertrep.train", "fine-tune (or read out) one encoder: one MLflow run"),
    "sweep": ("bertrep.sweep", "a Ray Tune grid of training runs under one parent run"),
    "analyze": ("bertrep.analyze", "CKA profiles, Mean-CKA, AuFC, forgetting: one run"),
    "figures": ("bertrep.figures", "redraw every figure of an analysis run from its tables"),
    "study": ("bertrep.study", "the three sweeps of a setting, the analysis and figures"),
    "tasks": ("bertrep.tasks", "check a data folder: every task's splits, sizes, chance"),
    "data": ("bertrep.data.fetch", "write the built-in tasks' data from the hub into a folder"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:{width}s}  {what}" for name, (_, what) in STAGES.items()]
    return (
        "usage: bertrep STAGE [options]   (bertrep STAGE --help: the stage's options)\n\n"
        "What fine-tuning, transfer and forgetting do inside a BERT-style encoder, layer "
        "by layer.\n\nstages:\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return
    stage, *rest = argv
    if stage not in STAGES:
        raise SystemExit(f"bertrep: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    module = importlib.import_module(STAGES[stage][0])
    sys.argv[0] = f"bertrep {stage}"  # what the stage's --help and errors call it
    module.main(rest)


if __name__ == "__main__":
    main()

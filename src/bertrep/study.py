"""The whole study in one command: the three sweeps of a setting, the analysis, the
figures, then the headline numbers and where to look.

    python -m bertrep.study                        # the quick study (`make demo`)
    python -m bertrep.study --setting smoke --overrides "base_model=/path/to/tiny-bert"

Each stage is the `mlflow run` of this project that a user would type (printed before
it runs), so the runs it makes are those of the README's commands, and a second call
reuses every finished run (the sweeps skip finished config keys; the analysis reads
activation tables from its download cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bertrep import collect, env, server, tracking
from bertrep.progress import duration

SETTINGS = ("smoke", "quick", "paper")
SWEEPS = ("single", "aufc", "forgetting")
PROJECT = Path(__file__).resolve().parents[2]  # the repository: MLproject, sweeps/, analysis/
HEADLINE = ("Mean-CKA", "AuFC\n", "Does representation similarity predict transfer?")


def stages(setting: str, overrides: str, figures: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of every stage, in order."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    run = [mlflow, "run", str(PROJECT), "--env-manager", "local", "-e"]
    out = []
    for kind in SWEEPS:
        spec = PROJECT / "sweeps" / setting / f"{kind}.yaml"
        out.append((f"sweep {kind}", [*run, f"sweep_{kind}", "-P", f"spec={spec}",
                                      "-P", f"overrides={overrides}"]))  # fmt: skip
    spec = PROJECT / "analysis" / f"{setting}.yaml"
    analysis = analyze_overrides(overrides)
    out.append(("analysis", [*run, "analyze", "-P", f"spec={spec}", "-P", f"overrides={analysis}"]))
    # `make figures`'s command: redrawing needs no run of its own
    out.append(("figures", [sys.executable, "-m", "bertrep.figures", "--out", str(figures)]))
    return out


def analyze_overrides(overrides: str) -> str:
    """The analysis spec's share of the sweep overrides: its base model, if one is set."""
    pairs = [p.split("=", 1) for p in overrides.split(",") if "=" in p]
    return ",".join(f"{k.strip()}={v.strip()}" for k, v in pairs if k.strip() == "base_model")


def headline(summary: str) -> str:
    """The Mean-CKA and AuFC matrices and their correlation, from the analysis summary."""
    sections = summary.split("\n## ")
    return "\n".join("## " + s.rstrip() + "\n" for s in sections[1:] if s.startswith(HEADLINE))


def check_project() -> None:
    if not (PROJECT / "MLproject").is_file():
        raise SystemExit(
            f"bertrep.study runs this project's MLproject, which is not at {PROJECT}: run it "
            "from a clone of the repository (pip install -e .)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=SETTINGS, default="quick",
                        help="sweeps/<setting>/ and analysis/<setting>.yaml")  # fmt: skip
    parser.add_argument("--overrides", default="", help='for every sweep, e.g. "base_model=/p"')
    parser.add_argument("--figures", default="figures", help="where the figures go")
    args = parser.parse_args(argv)
    check_project()
    # `mlflow run --env-manager local` runs the `python` on PATH: make it this one
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.setdefault(env.MLFLOW_ARTIFACTS_PROGRESS_BAR, "false")  # a bar per download
    store = server.store_uri()
    os.environ[env.MLFLOW_TRACKING_URI] = store  # every stage, and the reads below, on one store
    figures = Path(args.figures)
    took: dict[str, float] = {}
    began = time.monotonic()
    for name, cmd in stages(args.setting, args.overrides, figures):
        print(f"\n=== {args.setting} study, {name}: {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        done = subprocess.run(cmd)
        took[name] = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{args.setting} study: {name} failed (exit {done.returncode}); "
                             "run it again to continue: finished runs are kept")  # fmt: skip
    with server.through_server():  # artifacts logged through a server read back through one
        run = collect.analysis_run()
        summary_uri = f"{tracking.RUNS_URI}{run.info.run_id}/{tracking.ANALYSIS_SUMMARY}"
        summary = tracking.mlflow.artifacts.load_text(summary_uri)
    print(f"\n=== {args.setting} study done in {duration(time.monotonic() - began)}: "
          + ", ".join(f"{k} {duration(v)}" for k, v in took.items()))  # fmt: skip
    print(headline(summary))
    print(f"figures: {figures.resolve()}")
    print(f"summary: {summary_uri}")
    print(f"runs: {tracking.runs_page(store, run.info.experiment_id)}")


if __name__ == "__main__":
    main()

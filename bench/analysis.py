"""What the uncertainty and diagnostics outputs add to the analysis stage: the same
analysis of one store run twice in one process, without them (bootstrap.replicates=0,
diagnostics=false, predictors=false) and with them (the spec's defaults), with the
download cache warm for both.

    MLFLOW_TRACKING_URI=sqlite:////path/to/quick/mlflow.db BERTREP_CACHE_DIR=... \\
        BERTREP_DATA_DIR=../shared/data python bench/analysis.py --spec analysis/quick.yaml

Each analysis logs its run into the store (as `make demo` would); the printed figures
are the wall time of `analyze` (collect, compute, tables, summary, figures, logging) and
of the new tables alone.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# (label, module file, function) of the parts the new outputs add
PARTS = [
    ("profile intervals", "analysis/intervals.py", "profile"),
    ("AuFC intervals", "analysis/intervals.py", "aufc_intervals"),
    ("rogue dimensions", "analysis/diagnostics.py", "rogue_tables"),
    ("subgroup profiles", "analysis/diagnostics.py", "subgroup_profiles"),
    ("LogME", "analysis/predictors.py", "logme_table"),
    ("shoot-out", "analysis/predictors.py", "shootout"),
    ("interval figures", "figures/uncertainty.py", "interval_figures"),
    ("predictor figure", "figures/uncertainty.py", "predictor_figure"),
    ("rogue figure", "figures/uncertainty.py", "rogue_figure"),
    ("subgroup figure", "figures/uncertainty.py", "subgroup_figure"),
]


def timed(spec_path: str, overrides: str) -> tuple[float, dict[str, float]]:
    from bertrep import analyze, env
    from bertrep.tracking import server

    os.environ.setdefault(env.MLFLOW_ARTIFACTS_PROGRESS_BAR, "false")

    spec = analyze.load_spec(spec_path, overrides)
    profile = cProfile.Profile()
    start = time.perf_counter()
    with server.through_server():
        profile.enable()
        analyze.analyze(spec, Path(spec_path).read_text())
        profile.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    parts = {}
    for label, file, function in PARTS:
        hits = [
            v[3] for (path, _, name), v in stats.items() if path.endswith(file) and name == function
        ]
        parts[label] = max(hits, default=0.0)
    return wall, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(REPO / "analysis" / "quick.yaml"))
    args = parser.parse_args()
    off = "bootstrap.replicates=0,diagnostics=false,predictors=false"
    timed(args.spec, off)  # warm: every table in the download cache, imports done
    base, _ = timed(args.spec, off)
    full, parts = timed(args.spec, "")
    print(f"\nanalysis without the new outputs: {base:.1f}s")
    print(
        f"analysis with them:               {full:.1f}s  ({full / base:.2f}x, +{full - base:.1f}s)"
    )
    for label, seconds in parts.items():
        print(f"  {label:<20} {seconds:6.1f}s")


if __name__ == "__main__":
    main()

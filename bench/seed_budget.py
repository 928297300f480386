"""AuFC interval widths against the number of seeds, measured on one study's store: the
trade-off behind the quick setting's three seeds (docs/sweeps.md, "Three seeds").

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python bench/seed_budget.py

It reads the newest finished analysis run (or --run) and its per-seed AuFC values
(tables/aufc_seeds) and cells (tables/aufc). For every n from 2 to the number of seeds
the store holds, and for every subset of n seeds, each AuFC cell of a learned target
(status ok) that holds those seeds gets the mean of its n seeds and their t-interval at
the analysis' level. The interval is computed by the analysis' own function
(analysis.intervals.aufc_intervals), so the subset of all seeds reproduces the analysis'
intervals.

Printed per n:
- per target, the widest half-width over its cells: the mean over subsets and the
  largest;
- what the subset's trials cost: the summed wall time (end − start) of the single-task
  runs of those seeds that the analysis read (tables/runs: the single sweep and the AuFC
  grid), divided by the trials a sweep runs at once (--workers). The forgetting runs and
  the read-out of the pretrained model do not depend on the seeds and are left out.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bertrep import tracking  # noqa: E402
from bertrep.analysis import collect  # noqa: E402
from bertrep.analysis.intervals import BootstrapRule, aufc_intervals  # noqa: E402
from bertrep.tracking import server  # noqa: E402

HEADLINE = "aufc"  # the variant the README and docs/results.md report


def widths(cells: pd.DataFrame, seeds: pd.DataFrame, subset: tuple[int, ...]) -> pd.Series:
    """Per target, the widest AuFC half-width over its learned cells with `subset`'s seeds;
    only targets that hold every seed of `subset` (a study may give one target more seeds)."""
    learned = cells[(cells.variant == HEADLINE) & (cells.status == "ok")].copy()
    mine = seeds[(seeds.variant == HEADLINE) & seeds.seed.isin(subset)]
    held = mine.groupby("target").seed.nunique()
    mine = mine[mine.target.isin(held.index[held == len(subset)])]
    learned = learned[learned.target.isin(mine.target)]
    means = mine.groupby(["source", "target"]).value.mean()
    learned["value"] = [means.get((c.source, c.target), np.nan) for c in learned.itertuples()]
    level = float(cells.ci_level.dropna().iloc[0]) if cells.ci_level.notna().any() else 0.95
    ci = aufc_intervals(learned, mine, BootstrapRule(level=level))
    return ((ci.ci_high - ci.ci_low) / 2).groupby(ci.target).max()


def trial_minutes(read: pd.DataFrame, times: pd.DataFrame, subset, workers: int) -> float:
    """The summed wall time of the single-task runs of `subset`'s seeds among those the
    analysis read (`read`: its runs table; `times`: run_id, start_time, end_time), over
    the trials run at once."""
    ids = read.run_id[(read["mode"] == "single") & read.seed.isin(subset)]
    mine = times[times.run_id.isin(ids)]
    return (mine.end_time - mine.start_time).dt.total_seconds().sum() / workers / 60


def table(folder: Path, times: pd.DataFrame, workers: int) -> pd.DataFrame:
    """One row per n and subset: its trials' minutes and per-target widest half-width."""
    cells = pd.read_parquet(folder / "aufc.parquet")
    seeds = pd.read_parquet(folder / "aufc_seeds.parquet")
    read = pd.read_parquet(folder / "runs.parquet")
    held = sorted(seeds.seed.unique())
    if len(held) < 2:
        raise SystemExit(f"the analysis holds AuFC values of {len(held)} seed(s): no interval")
    rows = []
    for n in range(2, len(held) + 1):
        for subset in itertools.combinations(held, n):
            row = {"seeds": n, "subset": ",".join(map(str, subset)),
                   "minutes": trial_minutes(read, times, subset, workers)}  # fmt: skip
            rows.append(row | widths(cells, seeds, subset).to_dict())
    return pd.DataFrame(rows)


def analysis_tables(run_id: str, tmp: str) -> tuple[str, Path]:
    """(run id, its downloaded tables folder) of `run_id`, or of the newest finished
    analysis run (collect.analysis_run); one clear error where there is none."""
    try:
        run = collect.analysis_run(run_id)
    except (collect.MissingInput, mlflow.exceptions.MlflowException) as err:
        raise SystemExit(f"{run_id or mlflow.get_tracking_uri()}: {err}") from None
    if run.data.tags.get(tracking.KIND) != tracking.ANALYSIS_KIND:
        raise SystemExit(f"--run {run_id}: not an analysis run")
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=tracking.TABLES_DIR, dst_path=tmp)  # fmt: skip
    return run.info.run_id, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="", help="an analysis run id (default: the newest)")
    parser.add_argument("--workers", type=int, default=2, help="trials a sweep runs at once")
    args = parser.parse_args()
    store = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp, server.serve(store, Path(tmp) / "server") as uri:
        with server.tracking_at(uri):
            run_id, folder = analysis_tables(args.run, tmp)
            times = mlflow.search_runs(search_all_experiments=True)
            rows = table(folder, times, args.workers)
    targets = [c for c in rows.columns if c not in ("seeds", "subset", "minutes")]
    print(f"# store {store}, analysis run {run_id}")
    print(f"# widest AuFC half-width per learned target: mean over subsets (largest); "
          f"minutes: the seeds' single-task runs' wall time / {args.workers} workers")  # fmt: skip
    print(f"{'seeds':>5} {'subsets':>7} {'minutes':>8}  " + "  ".join(f"{t:>15}" for t in targets))
    for n, group in rows.groupby("seeds"):
        cols = [f"{group[t].mean():.3f} ({group[t].max():.3f})" if group[t].notna().any()
                else "—" for t in targets]  # fmt: skip
        print(f"{n:>5} {len(group):>7} {group.minutes.mean():>8.1f}  "
              + "  ".join(f"{c:>15}" for c in cols))  # fmt: skip
    print(rows.round(3).to_string(index=False))


if __name__ == "__main__":
    main()

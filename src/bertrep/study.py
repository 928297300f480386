"""The whole study in one command: the three sweeps of a setting, the analysis, its
figures, then the headline numbers and where to look.

    python -m bertrep.study                        # the quick study (`make demo`)
    python -m bertrep.study --setting smoke --overrides "base_model=/path/to/tiny-bert"

Each stage is the `mlflow run` of this project that a user would type (printed before
it runs), so the runs it makes are those of the README's commands, and a second call
reuses every finished run (the sweeps skip finished config keys; the analysis reads
activation tables from its download cache). The stages share one tracking server for
the store, started here, as they would a shared server; the figures the analysis drew
are copied out of its run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertrep import env, tracking
from bertrep.analysis import collect
from bertrep.sweeps.progress import duration
from bertrep.sweeps.spec import KINDS, SETTINGS
from bertrep.tracking import server

PROJECT = Path(__file__).resolve().parents[2]  # the repository: MLproject, sweeps/, analysis/
STAGE_STOP_TIMEOUT_S = 300.0  # for an interrupted stage to end its runs
HEADLINE = ("Mean-CKA", "AuFC\n", "Does representation similarity predict transfer?",
            "Did the head-only trials converge?")  # fmt: skip


def stages(setting: str, overrides: str) -> list[tuple[str, list[str]]]:
    """(name, command) of every stage, in order, each logging into the study's experiment."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    experiment = tracking.study_experiment(setting)
    run = [mlflow, "run", str(PROJECT), "--env-manager", "local",
           "--experiment-name", experiment, "-e"]  # fmt: skip
    out = []
    for kind in KINDS:
        spec = PROJECT / "sweeps" / setting / f"{kind}.yaml"
        out.append((f"sweep {kind}", [*run, f"sweep_{kind}", "-P", f"spec={spec}",
                                      "-P", f"overrides={overrides}"]))  # fmt: skip
    spec = PROJECT / "analysis" / f"{setting}.yaml"
    analysis = analyze_overrides(overrides)
    out.append(("analysis", [*run, "analyze", "-P", f"spec={spec}", "-P", f"overrides={analysis}"]))
    return out


class _Terminated(KeyboardInterrupt):
    """SIGTERM: stop as on Ctrl-C, passing it on to the running stage."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def run_stage(cmd: list[str]) -> int:
    """Run one stage; its exit status. Interrupted (Ctrl-C reaches the stage too, SIGTERM
    is passed on as SIGINT), wait for it to end its runs KILLED through the shared
    server (which its supervisor restarts should the signal have stopped it) before the
    server goes with the study."""
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, _Terminated):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STAGE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def fetch_figures(run_id: str, out: Path) -> list[Path]:
    """The figures the analysis run drew and logged, copied into `out`. (`make figures`
    would draw them again from its tables: the same files, half a minute more.)"""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=tracking.FIGURES_DIR, dst_path=tmp
        )
        logged = sorted(p for p in Path(folder).iterdir() if p.is_file())
        for path in logged:
            shutil.copy2(path, out / path.name)
    return [out / p.name for p in logged]


def analyze_overrides(overrides: str) -> str:
    """The analysis spec's share of the sweep overrides: its base model, if one is set."""
    pairs = [p.split("=", 1) for p in overrides.split(",") if "=" in p]
    return ",".join(f"{k.strip()}={v.strip()}" for k, v in pairs if k.strip() == "base_model")


def headline(summary: str) -> str:
    """The Mean-CKA and AuFC matrices, their correlation and the convergence check of the
    head-only trials, from the analysis summary."""
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
    signal.signal(signal.SIGTERM, _terminate)
    store = server.store_uri()
    experiment = tracking.study_experiment(args.setting)
    client = tracking.mlflow.MlflowClient(store)
    if not tracking.is_server_uri(store) and client.get_experiment_by_name(experiment) is None:
        # made here, not by the server: the study's experiment keeps artifacts in a local
        # folder, as one `mlflow run` makes on the store does (runs an earlier study left
        # in Default are still found: sweeps skip finished config keys in any experiment)
        client.create_experiment(experiment)
    figures = Path(args.figures)
    took: dict[str, float] = {}
    began = time.monotonic()
    # One tracking server for every stage (as on a shared server), not one per stage: each
    # sweep and the analysis would start and stop their own, ~15 s apiece.
    with server.serve(store, Path(server.LOG_DIR).resolve()) as uri, server.tracking_at(uri):
        if uri != store:
            print(f"=== {args.setting} study: {store} served at {uri} for every stage")
            # the stages end their runs and print links on the store itself, not through
            # (or naming) this server, which is gone once the study ends
            os.environ[env.STORE] = store
            os.environ[env.MLFLOW_SUPPRESS_URL] = "true"
        for name, cmd in stages(args.setting, args.overrides):
            print(f"\n=== {args.setting} study, {name}: {' '.join(cmd)}", flush=True)
            started = time.monotonic()
            code = run_stage(cmd)
            took[name] = time.monotonic() - started
            if code != 0:
                raise SystemExit(f"{args.setting} study: {name} failed (exit {code}); "
                                 "run it again to continue: finished runs are kept")  # fmt: skip
        run = collect.analysis_run()
        print(f"\n=== {args.setting} study, figures: the analysis run's, into {figures}")
        started = time.monotonic()
        print(f"{len(fetch_figures(run.info.run_id, figures))} files", flush=True)
        took["figures"] = time.monotonic() - started
        summary_uri = f"{tracking.RUNS_URI}{run.info.run_id}/{tracking.ANALYSIS_SUMMARY}"
        summary = tracking.mlflow.artifacts.load_text(summary_uri)
    print(f"\n=== {args.setting} study done in {duration(time.monotonic() - began)}: "
          + ", ".join(f"{k} {duration(v)}" for k, v in took.items()))  # fmt: skip
    print(headline(summary))
    print(f"figures: {figures.resolve()}")
    print(f"summary: {summary_uri}")
    print(f"runs: {server.runs_page(store, run.info.experiment_id)}")


if __name__ == "__main__":
    main()

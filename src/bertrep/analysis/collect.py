"""What the analysis reads, from MLflow alone: sweeps, their training runs, the registered
source versions, metric histories, and activation tables downloaded once into a cache
keyed by content.

    store = Store("bertrep")                        # an experiment name
    parent = store.sweep("aufc")                    # the newest finished aufc sweep
    runs = store.sweep_runs(parent)                 # [TrainRun], one per trial and source
    path = store.activations(runs[0], "stsb")       # a local Parquet file, cached

Nothing here guesses a local path: every file comes through MLflow's artifact API.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.data import tasks
from bertrep.data.tasks import TASKS
from bertrep.errors import InputError
from bertrep.sweeps import runs as sweep_runs
from bertrep.training.config import repeats_when_longer


class MissingInput(LookupError):
    """Something the analysis spec names is not in the store (one line saying what)."""


@dataclass(frozen=True)
class TrainRun:
    """One finished training (or extract) run, as its tags and final metrics say."""

    run_id: str
    task: str
    mode: str
    source_task: str
    frozen_layers: int
    seed: int
    base_model: str  # what it started from: a pretrained model or models:/bertrep-A/v
    root_model: str  # the pretrained model at the root of that chain
    config_key: str
    diverged: bool
    num_layers: int
    final_score: float
    chance: float
    probe_digests: dict[str, str] = field(default_factory=dict)  # probe task -> digest
    params: dict[str, str] = field(default_factory=dict)
    registered_as: str = ""
    # probe task -> (run id, artifact path) of a table referenced instead of extracted
    tables_from: dict[str, tuple[str, str]] = field(default_factory=dict)
    word_digests: dict[str, str] = field(default_factory=dict)  # probe task -> word digest
    updates: float = float("nan")  # done (NaN: logged before runs counted them)

    @property
    def failed(self) -> bool:
        """Tagged diverged, or a final score not above chance by more than the run's
        diverge_margin (recomputed: runs logged before that rule counted below chance)."""
        margin = float(self.params.get("diverge_margin", 0) or 0)
        return self.diverged or (margin > 0 and self.final_score - self.chance <= margin)

    @property
    def stopped_early(self) -> bool:
        """Stopped before its max_steps where a larger cap repeats it update for update
        (TrainConfig.repeats_when_longer): it is its own run with more max_steps."""
        p = self.params
        repeats = repeats_when_longer(
            int(float(p.get("early_stopping", 0) or 0)),
            p.get("schedule", "linear"),
            float(p.get("warmup_ratio", 0.1) or 0),
        )
        return repeats and self.updates < float(p.get("max_steps", 0) or 0)

    @property
    def label(self) -> str:
        """How a person names it: `stsb from sst2, k=3, seed 0`."""
        if self.mode == tracking.EXTRACT_MODE:
            return f"{self.root_model} (pretrained)"
        start = "base" if self.source_task == tracking.BASE_SOURCE else self.source_task
        how = {"single": "from", "sequential": "after", "shuffled": "mixed with"}[self.mode]
        return f"{self.task} {how} {start}, k={self.frozen_layers}, seed {self.seed}"


def _know_own_tasks(tags: dict) -> None:
    """Read the task files a run names (where they still are), so that its own tasks are
    known by name here too; one that moved or changed is left to the spec to name."""
    for key, path in tags.items():
        if key.startswith(tracking.TASK_FILE) and key[len(tracking.TASK_FILE) :] not in TASKS:
            try:
                tasks.register(path)
            except (InputError, OSError):
                pass


def _int(tags: dict, key: str, default: int = 0) -> int:
    return int(float(tags.get(key, default)))


class Store:
    """Queries on one tracking store (MLflow's current tracking URI), paginated: in one
    experiment, or with none named in every active one (`mlflow run` without
    --experiment-name logs sweeps to MLflow's Default experiment)."""

    def __init__(self, experiment: str = "", cache_dir: str | Path | None = None) -> None:
        self.client = MlflowClient()
        if experiment:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                raise MissingInput(
                    f"experiment {experiment!r} does not exist in {mlflow.get_tracking_uri()}"
                )
            self.experiment_ids = [found.experiment_id]
        else:
            self.experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        self.where = f"experiment {experiment!r}" if experiment else "any experiment"
        root = Path(cache_dir or env.cache_root()) / "activations"
        self.cache = ArtifactCache(root)
        self._versions: dict[str, dict] = {}
        self._steps: dict[tuple[str, str], list[int]] = {}

    # --- runs ---

    def search(self, query: str, experiment_ids: list[str] | None = None) -> list[Run]:
        """Every run matching `query`, all pages (a paper store holds 600+ runs)."""
        ids = experiment_ids or self.experiment_ids
        out, token = [], None
        while True:
            page = self.client.search_runs(
                ids,
                query,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            out += list(page)
            token = page.token
            if not token:
                return out

    def sweep(self, kind: str, ref: str = "") -> Run:
        """A sweep's parent run: by id, by name (the newest finished one of that name),
        or with no ref the newest finished sweep of `kind`."""
        if ref and len(ref) == 32 and all(c in "0123456789abcdef" for c in ref):
            try:
                run = self.client.get_run(ref)
            except mlflow.exceptions.MlflowException:
                raise MissingInput(f"sweep run {ref} does not exist") from None
            if run.data.tags.get(tracking.KIND) != tracking.SWEEP_KIND:
                raise MissingInput(f"run {ref} is not a sweep's parent run")
            runs = [run] if run.info.status == "FINISHED" else []
        else:
            query = (
                f"tags.`{tracking.KIND}` = '{tracking.SWEEP_KIND}' "
                "and attributes.status = 'FINISHED'"
            )
            query += f" and tags.`{tracking.SWEEP_NAME}` = '{ref}'" if ref else ""
            runs = self.search(query)
        runs = [r for r in runs if sweep_runs.sweep_kind(r) in (kind, "")]  # "": older sweeps
        if not runs:
            what = f"{ref!r}" if ref else ""
            raise MissingInput(
                f"no finished {kind} sweep {what} in {self.where}".replace("  ", " ")
            )
        return runs[0]

    def sweep_runs(self, parent: Run) -> list[TrainRun]:
        """The FINISHED run of every trial and source of a sweep, including those an earlier
        sweep trained (a rerun skips them), as the sweep's run list names them."""
        ids = self.sweep_run_ids(parent)
        if ids is None:  # a sweep that logged no run list: its own children
            query = f"tags.`{tracking.PARENT_RUN}` = '{parent.info.run_id}'"
            runs = self.search(query + " and attributes.status = 'FINISHED'")
        else:
            runs = [r for i in ids if (r := self._active(i)) is not None]
        return [self.train_run(r) for r in runs if r.info.status == "FINISHED"]

    def _active(self, run_id: str) -> Run | None:
        """A run that still exists and is not deleted, else None."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def sweep_run_ids(self, parent: Run) -> list[str] | None:
        """The run of each of a sweep's configs, as the sweep listed them (None: no list)."""
        names = {f.path for f in self.client.list_artifacts(parent.info.run_id, "sweep")}
        if tracking.SWEEP_RUNS_FILE not in names:
            return None
        uri = f"{tracking.RUNS_URI}{parent.info.run_id}/{tracking.SWEEP_RUNS_FILE}"
        return sorted(set(json.loads(mlflow.artifacts.load_text(uri)).values()))

    def train_run(self, run: Run) -> TrainRun:
        tags, metrics = run.data.tags, run.data.metrics
        _know_own_tasks(tags)
        base = tags.get(tracking.BASE_MODEL, "")
        return TrainRun(
            run_id=run.info.run_id,
            task=tags.get(tracking.TASK, ""),
            mode=tags.get(tracking.MODE, "single"),
            source_task=tags.get(tracking.SOURCE_TASK, tracking.BASE_SOURCE),
            frozen_layers=_int(tags, tracking.FROZEN_LAYERS),
            seed=_int(tags, tracking.SEED),
            base_model=base,
            root_model=self.root_model(base),
            config_key=tags.get(tracking.CONFIG_KEY, ""),
            diverged=tags.get(tracking.DIVERGED) == "true",
            num_layers=_int(tags, tracking.NUM_LAYERS),
            final_score=metrics.get(tracking.FINAL_SCORE, float("nan")),
            chance=metrics.get(tracking.CHANCE, float("nan")),
            probe_digests=tracking.probe_digests(tags),
            params=dict(run.data.params),
            registered_as=tags.get(tracking.REGISTERED_AS, ""),
            tables_from=tracking.activations_from(tags),
            word_digests=tracking.word_probe_digests(tags),
            updates=metrics.get(tracking.UPDATES, float("nan")),
        )

    # --- the registry ---

    def version(self, uri: str) -> dict:
        """A registered version (models:/name/v) as {name, version, run_id, tags}."""
        if uri not in self._versions:
            name, version = tracking.parse_model_uri(uri)
            v = self.client.get_model_version(name, version)
            self._versions[uri] = {
                "name": v.name,
                "version": v.version,
                "run_id": v.run_id,
                "tags": dict(v.tags),
            }
        return self._versions[uri]

    def root_model(self, base_model: str) -> str:
        """The pretrained model a chain of registered versions starts from."""
        seen = set()
        while tracking.is_model_uri(base_model) and base_model not in seen:
            seen.add(base_model)
            base_model = self.version(base_model)["tags"].get(tracking.BASE_MODEL, base_model)
        return base_model

    def source_run(self, uri: str) -> TrainRun:
        """The training run behind a registered version."""
        return self.train_run(self.client.get_run(self.version(uri)["run_id"]))

    # --- metrics and artifacts ---

    def history(self, run_id: str, key: str) -> dict[int, float]:
        return {m.step: m.value for m in self.client.get_metric_history(run_id, key)}

    def activation_steps(self, run_id: str, probe_task: str) -> list[int]:
        """The steps at which the run logged activations on `probe_task`'s probe set
        (listed once per analysis: a finished run's artifacts do not change)."""
        key = (run_id, probe_task)
        if key not in self._steps:
            files = self.client.list_artifacts(run_id, tracking.activations_dir(probe_task))
            self._steps[key] = sorted(
                tracking.activations_step(f.path) for f in files if not f.is_dir
            )
        return self._steps[key]

    def activations(self, run: TrainRun, probe_task: str, step: int | None = None) -> Path:
        """A local copy of the run's activation table on `probe_task` at `step` (default:
        its last); a MissingInput when the run has none. A run that referenced its start
        model's table (every layer frozen) gets that table."""
        steps = self.activation_steps(run.run_id, probe_task)
        if not steps and step is None and probe_task in run.tables_from:
            source_id, artifact = run.tables_from[probe_task]
            return self.cache.get(source_id, artifact, run.probe_digests.get(probe_task, ""))
        if not steps or (step is not None and step not in steps):
            at = "" if step is None else f" at step {step}"
            raise MissingInput(f"run {run.run_id} ({run.label}) has no {probe_task} table{at}")
        step = steps[-1] if step is None else step
        artifact = f"{tracking.activations_dir(probe_task)}/{tracking.activations_file(step)}"
        return self.cache.get(run.run_id, artifact, run.probe_digests.get(probe_task, ""))

    def word_table(self, run: TrainRun, probe_task: str) -> Path:
        """A local copy of the run's last word table on `probe_task` (MissingInput: none)."""
        files = self.client.list_artifacts(run.run_id, tracking.words_dir(probe_task))
        steps = sorted(tracking.activations_step(f.path) for f in files if not f.is_dir)
        if not steps:
            raise MissingInput(f"run {run.run_id} ({run.label}) has no {probe_task} word table")
        artifact = f"{tracking.words_dir(probe_task)}/{tracking.activations_file(steps[-1])}"
        return self.cache.get(run.run_id, artifact, run.word_digests.get(probe_task, ""))


class ArtifactCache:
    """Run artifacts downloaded once, keyed by content: (artifact URI, probe digest).
    A file appears under its key only when complete, so a killed analysis leaves no
    half-written entry, and the next one downloads what is missing and nothing else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads = 0
        self.hits = 0

    def get(self, run_id: str, artifact_path: str, digest: str) -> Path:
        uri = f"{tracking.RUNS_URI}{run_id}/{artifact_path}"
        key = hashlib.sha256(json.dumps([uri, digest]).encode()).hexdigest()[:24]
        path = self.root / key[:2] / f"{key}{Path(artifact_path).suffix}"
        if path.exists():
            self.hits += 1
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=tmp
            )
            part = Path(tmp) / f".{key}.part"
            shutil.move(local, part)
            os.replace(part, path)  # atomic: the entry is whole or absent
        self.downloads += 1
        return path


# --- the analysis run's own artifacts ---


def log_tables(tables: dict[str, pd.DataFrame], folder: Path, under: str = "") -> None:
    """Each table as tables/[<under>/]<name>.parquet of the active run (pyarrow alone
    reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False), folder / f"{name}.parquet"
        )
    mlflow.log_artifacts(str(folder), "/".join(filter(None, [tracking.TABLES_DIR, under])))


def read_tables(run_id: str, folder: Path, under: str = "") -> dict[str, pd.DataFrame]:
    """The tables an analysis run logged (in tables/, or in tables/<under>/), by name."""
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="/".join(filter(None, [tracking.TABLES_DIR, under])),
        dst_path=str(folder),
    )
    return {p.stem: pd.read_parquet(p) for p in sorted(Path(local).glob("*.parquet"))}


def table_folders(run_id: str) -> list[str]:
    """The base models' folders under tables/ of an analysis of several base models."""
    listed = MlflowClient().list_artifacts(run_id, tracking.TABLES_DIR)
    return sorted(Path(f.path).name for f in listed if f.is_dir)


def analysis_run(run_id: str = "") -> Run:
    """An analysis run by id, else the newest finished one of any experiment."""
    if run_id:
        return MlflowClient().get_run(run_id)
    query = (
        f"tags.`{tracking.KIND}` = '{tracking.ANALYSIS_KIND}' and attributes.status = 'FINISHED'"
    )
    runs = mlflow.search_runs(
        filter_string=query,
        search_all_experiments=True,
        max_results=1,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    if not runs:
        raise MissingInput(
            f"no finished analysis run in {mlflow.get_tracking_uri()}: run `make analyze`"
        )
    return runs[0]


def read_text(run_id: str, artifact: str) -> str:
    try:
        return mlflow.artifacts.load_text(f"{tracking.RUNS_URI}{run_id}/{artifact}")
    except (OSError, mlflow.exceptions.MlflowException):
        return ""

"""Sweep specs: YAML + overrides -> a validated Spec -> the trials' TrainConfigs.

    python -m bertrep.sweep --spec sweeps/quick/aufc.yaml --overrides "max_steps=10,seed=[0,1]"

    >>> from bertrep.sweeps.spec import load_spec, trials
    >>> configs = trials(load_spec("sweeps/quick/aufc.yaml", "max_steps=10"))

A spec (see sweeps/README.md and docs/sweeps.md) names fixed training
parameters, a grid (or a list of grids) over any TrainConfig field, per-task
parameters, how transfer sources are trained, and per-trial resources. This module
only reads specs: it imports neither Ray nor MLflow nor torch (a test checks), so a
spec is checked in a moment; `bertrep.sweep` runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bertrep import env, tracking
from bertrep.data.tasks import get_task, is_task_file
from bertrep.errors import InputError
from bertrep.training.config import TrainConfig

KINDS = ("single", "aufc", "forgetting")  # the kinds of sweep: MLproject's sweep_<kind>
SETTINGS = ("smoke", "quick", "paper")  # sweeps/<setting>/<kind>.yaml, analysis/<setting>.yaml
SPEC_KEYS = ("kind", "name", "description", "fixed", "grid", "per_task", "sources", "resources")
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SOURCE_FIELDS = tuple(TrainConfig().source_fields())  # a source's own: `sources` cannot set


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1  # also the trial's torch threads, so trials never oversubscribe
    gpus_per_trial: float = 0.25  # used only where the cluster has GPUs; < 1 packs trials
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    # Retries of a trial that raised or whose worker process died (killed, out of memory,
    # its node lost); each failed attempt's run ends FAILED with the reason.
    max_failures: int = 1


def _resources(values: dict, source: str) -> Resources:
    """Resources from the spec: known keys, numbers of the right kind and range."""
    known = {f.name: f.default for f in dataclasses.fields(Resources)}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"{source}: unknown key {key!r} in resources")
        whole = isinstance(known[key], int) and key != "cpus_per_trial"
        kind = "a whole number" if whole else "a number"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise InputError(f"{source}: resources.{key} must be {kind}, not {value!r}")
        if value < 0 or (key == "cpus_per_trial" and value <= 0):
            bound = "> 0" if key == "cpus_per_trial" else ">= 0"
            raise InputError(f"{source}: resources.{key} must be {bound}, not {value!r}")
    return Resources(**values)


@dataclass(frozen=True)
class Spec:
    kind: str
    name: str
    fixed: dict[str, Any]
    grids: list[dict[str, list]]
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    resources: Resources = Resources()
    raw: dict = field(default_factory=dict)  # after overrides: what is tagged and digested
    path: str = ""

    def digest(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


def parse_overrides(text: str) -> dict[str, Any]:
    """`max_steps=10,seed=[0,1],resources.cpus_per_trial=2` -> {key: YAML value}."""
    out = {}
    for item in re.split(r",(?![^\[]*\])", text or ""):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A dotted key sets that place in the spec. A training parameter wins everywhere:
    `k=v` sets it for every trial and source, `k=[a,b]` makes it the grid axis."""
    raw = copy.deepcopy(raw)
    grids = raw.get("grid") or {}
    raw["grid"] = grids = [grids] if isinstance(grids, dict) else grids
    if not grids:
        grids.append({})
    for key, value in overrides.items():
        if "." in key:
            *path, last = key.split(".")
            place = raw
            for part in path:
                place = place.setdefault(part, {})
            place[last] = value
            continue
        if key not in FIELDS:
            raise InputError(f"override: unknown training parameter {key!r}")
        for section in [*grids, *(raw.get("per_task") or {}).values(), raw.get("sources") or {}]:
            section.pop(key, None)
        if isinstance(value, list):
            (raw.get("fixed") or {}).pop(key, None)
            for grid in grids:
                grid[key] = value
        else:
            raw.setdefault("fixed", {})[key] = value
    return raw


def _params(where: str, values: Any, source: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InputError(f"{source}: {where} must be a mapping of training parameters")
    for key in values:
        if key not in FIELDS:
            raise InputError(f"{source}: unknown training parameter {key!r} in {where}")
    return dict(values)


def _read_task_files(places: list[dict], source: str) -> None:
    """Read every task file a spec names (task, source_task, probe_tasks, task_files), so
    that per_task may name an own task by its name."""
    for place in places:
        for key in ("task", "source_task", "probe_tasks", "task_files"):
            values = place.get(key, [])
            for value in values if isinstance(values, list) else [values]:
                for ref in str(value).split(","):
                    if is_task_file(ref.strip()):
                        _task_name(ref.strip(), source, key)


def _task_name(task: str, source: str, place: str) -> str:
    """A task's name (a task file counts by its name); one error saying where it is."""
    try:
        return get_task(task).name
    except InputError as error:  # a bad task file: its own message
        raise InputError(f"{source}: {place}: {error}") from None
    except (ValueError, FileNotFoundError):
        raise InputError(f"{source}: unknown task {task!r} in {place}") from None


def spec_from_dict(raw: dict, source: str = "<spec>") -> Spec:
    """Validate a spec mapping; an unknown key anywhere is an error naming it."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: a spec is a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            raise InputError(f"{source}: unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
    if raw.get("kind") not in KINDS:
        raise InputError(f"{source}: kind must be one of {', '.join(KINDS)}")
    grids = raw.get("grid") or [{}]
    grids = [grids] if isinstance(grids, dict) else grids
    grids = [
        {k: v if isinstance(v, list) else [v] for k, v in _params("grid", g, source).items()}
        for g in grids
    ]
    for grid in grids:
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise InputError(f"{source}: grid axis {empty[0]!r} is empty: the grid has no trials")
    per_task = raw.get("per_task") or {}
    _read_task_files([raw.get("fixed") or {}, raw.get("sources") or {}, *grids], source)
    named = {}
    for task, values in per_task.items():
        named[_task_name(str(task), source, "per_task")] = values
        _params(f"per_task.{task}", values, source)
    per_task = named
    sources = _params("sources", raw.get("sources") or {}, source)
    for key in SOURCE_FIELDS:
        if key in sources:
            raise InputError(f"{source}: sources cannot set {key!r} (the sweep decides it)")
    resources = _resources(raw.get("resources") or {}, source)
    return Spec(
        kind=raw["kind"],
        name=str(raw.get("name") or Path(source).stem),
        fixed=_params("fixed", raw.get("fixed") or {}, source),
        grids=grids,
        per_task={t: dict(v) for t, v in per_task.items()},
        sources=sources,
        resources=resources,
        raw=raw,
        path=source,
    )


def read_yaml(path: Path) -> Any:
    """A spec file's YAML; malformed YAML is one error naming the file and the place."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f", line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}{at}: not valid YAML ({problem})") from None


def load_spec(path: str | Path, overrides: str = "") -> Spec:
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a spec is a mapping")
    return spec_from_dict(apply_overrides(raw, parse_overrides(overrides)), str(path))


def absolute_paths(params: dict[str, Any]) -> dict[str, Any]:
    """Trials run in Ray's trial folders: every local path they get is absolute."""
    out = dict(params)
    data_dir = str(out.get("data_dir") or os.environ.get(env.DATA_DIR, ""))
    if data_dir:
        out["data_dir"] = str(Path(data_dir).expanduser().resolve())
    base = Path(str(out.get("base_model", TrainConfig.base_model))).expanduser()
    if base.exists():
        out["base_model"] = str(base.resolve())
    return out


def config(spec: Spec, params: dict[str, Any]) -> TrainConfig:
    """fixed < per_task[task] < the grid point, local paths made absolute."""
    task = str(params.get("task", spec.fixed.get("task", TrainConfig.task)))
    merged = spec.fixed | spec.per_task.get(_task_name(task, str(spec.path), "task"), {}) | params
    try:
        return TrainConfig.from_dict(absolute_paths(merged))
    except (TypeError, ValueError) as error:
        raise InputError(f"{spec.path}: {error} (trial {params})") from error


def trials(spec: Spec) -> list[TrainConfig]:
    """Every grid point as a config, once each; full fine-tuning from the pretrained
    model first, so later trials find best_B for their normalized scores."""
    out: dict[str, TrainConfig] = {}
    for grid in spec.grids:
        for point in itertools.product(*grid.values()):
            cfg = config(spec, dict(zip(grid, point, strict=True)))
            out.setdefault(cfg.key(), cfg)
    return sorted(out.values(), key=lambda c: not c.registers_source)


def needs_source(cfg: TrainConfig) -> bool:
    """A trial that needs the model tuned on source_task A alone, looked up (or trained)
    in the registry: transfer and sequential trials start from it (unless base_model
    already names a model, or a sequential run trains its own A phase), shuffled trials
    measure drift against it (unless reference_model names one)."""
    if cfg.source_task == "base" or tracking.is_model_uri(cfg.base_model):
        return False
    if cfg.mode == "shuffled":
        return not cfg.reference_model
    return cfg.mode == "single" or (cfg.mode == "sequential" and cfg.source_steps == 0)


def source_config(spec: Spec, target: TrainConfig) -> TrainConfig:
    """The source of a transfer trial: full fine-tuning on its source task from the
    pretrained model with the target's seed, trained as `sources` (over fixed) says."""
    task = target.source_task
    merged = spec.fixed | spec.per_task.get(task, {}) | spec.sources | target.source_fields()
    merged["task_files"] = target.task_files  # the own tasks a source may be
    return TrainConfig.from_dict(absolute_paths(merged))


def sources(spec: Spec, targets: list[TrainConfig]) -> list[TrainConfig]:
    """The distinct sources the targets need (see needs_source)."""
    found = {(s := source_config(spec, t)).key(): s for t in targets if needs_source(t)}
    return list(found.values())


def split_repeats(
    configs: list[TrainConfig],
) -> tuple[list[TrainConfig], list[tuple[TrainConfig, TrainConfig]]]:
    """(the grid, its repeats): a config equal to another of the list but for a larger
    max_steps is a repeat of the shortest such one where that `repeats_when_longer`
    (the convergence check of a head-only trial). Each repeat comes as (repeat, shortest):
    the sweep trains it only where the shortest used its whole cap."""

    rest = [json.dumps(dataclasses.asdict(c) | {"max_steps": None}, sort_keys=True)
            for c in configs]  # fmt: skip
    shortest: dict[str, TrainConfig] = {}
    for cfg, others in zip(configs, rest, strict=True):
        if cfg.max_steps < shortest.setdefault(others, cfg).max_steps:
            shortest[others] = cfg
    grid, repeats = [], []
    for cfg, others in zip(configs, rest, strict=True):
        first = shortest[others]
        if cfg.max_steps > first.max_steps and first.repeats_when_longer:
            repeats.append((cfg, first))
        else:
            grid.append(cfg)
    return grid, repeats

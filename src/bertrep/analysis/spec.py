"""An analysis spec: which sweeps to read, the tasks, base model, CKA estimators, AuFC
grid, bootstrap and diagnostics (analysis/README.md lists every key).

    spec = load_spec("analysis/quick.yaml", "tasks=[sst2,pos]")

An unknown key anywhere, or a value of the wrong kind, is one InputError naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bertrep.analysis.intervals import BootstrapRule
from bertrep.analysis.tables import AufcRule
from bertrep.data.tasks import get_task
from bertrep.errors import InputError
from bertrep.maths.cka import ESTIMATORS
from bertrep.sweeps.spec import KINDS, parse_overrides, read_yaml
from bertrep.training.config import parse_bool


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    experiment: str = ""  # empty: $MLFLOW_EXPERIMENT_NAME, else the project's default
    sweeps: dict[str, str] = field(default_factory=lambda: dict.fromkeys(KINDS, ""))
    tasks: tuple[str, ...] = ("mnli", "stsb", "sst2", "pos")
    base_model: str = ""  # empty: the one model every run starts from
    estimators: tuple[str, ...] = ESTIMATORS  # the first is the headline
    embeddings: bool = False  # profiles over blocks 1..L; true adds the embedding output
    aufc: AufcRule = AufcRule()
    bootstrap: BootstrapRule = BootstrapRule()  # replicates: 0 turns intervals off
    diagnostics: bool = True  # rogue dimensions and token-subgroup profiles
    subgroup_min_tokens: int = 100  # probe tokens a subgroup needs for its profile
    predictors: bool = True  # the transfer-predictor shoot-out (with LogME)
    description: str = ""


def spec_from_dict(raw: dict, source: str = "<analysis spec>") -> AnalysisSpec:
    """Validate an analysis spec; an unknown key anywhere is an error naming it."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: an analysis spec is a mapping")
    known = [f.name for f in dataclasses.fields(AnalysisSpec)]
    for key in raw:
        if key not in known:
            raise InputError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
    sweeps = raw.get("sweeps", dict.fromkeys(KINDS, ""))
    if not isinstance(sweeps, dict) or not sweeps:
        raise InputError(f"{source}: sweeps must map a sweep kind to a name, run id or ''")
    for kind in sweeps:
        if kind not in KINDS:
            raise InputError(f"{source}: unknown sweep kind {kind!r} in sweeps")
    try:  # a task file counts by its name
        tasks = tuple(get_task(str(t)).name for t in raw.get("tasks", AnalysisSpec.tasks))
    except (ValueError, FileNotFoundError) as error:
        raise InputError(f"{source}: tasks: {error}") from None
    estimators = tuple(raw.get("estimators", ESTIMATORS))
    if not estimators or any(e not in ESTIMATORS for e in estimators):
        raise InputError(f"{source}: estimators must be among {', '.join(ESTIMATORS)}")
    rule = raw.get("aufc") or {}
    boot = raw.get("bootstrap") or {}
    for name, given, cls in (("aufc", rule, AufcRule), ("bootstrap", boot, BootstrapRule)):
        if not isinstance(given, dict):
            raise InputError(f"{source}: {name} must be a mapping")
        for key in given:
            if key not in [f.name for f in dataclasses.fields(cls)]:
                raise InputError(f"{source}: unknown key {key!r} in {name}")
    bootstrap = _bootstrap_rule(boot, source)
    return AnalysisSpec(
        name=str(raw.get("name") or Path(source).stem),
        experiment=str(raw.get("experiment") or ""),
        sweeps={k: str(v or "") for k, v in sweeps.items()},
        tasks=tasks,
        base_model=str(raw.get("base_model") or ""),
        estimators=estimators,
        embeddings=parse_bool(raw.get("embeddings", False)),
        aufc=AufcRule(
            grid=tuple(int(k) for k in rule.get("grid") or ()),
            require_endpoints=parse_bool(rule.get("require_endpoints", True)),
            min_margin=_margin(rule.get("min_margin", 0.0), source),
        ),
        bootstrap=bootstrap,
        diagnostics=parse_bool(raw.get("diagnostics", True)),
        subgroup_min_tokens=_whole(
            raw.get("subgroup_min_tokens", 100), "subgroup_min_tokens", source, least=4
        ),
        predictors=parse_bool(raw.get("predictors", True)),
        description=str(raw.get("description") or ""),
    )


def _margin(value, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InputError(f"{source}: aufc.min_margin must be a number >= 0; got {value!r}")
    return float(value)


def _whole(value, key: str, source: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{source}: {key} must be a whole number >= {least}; got {value!r}")
    return value


def _bootstrap_rule(raw: dict, source: str) -> BootstrapRule:
    try:
        rule = BootstrapRule(
            replicates=int(raw.get("replicates", BootstrapRule.replicates)),
            level=float(raw.get("level", BootstrapRule.level)),
            seed=int(raw.get("seed", BootstrapRule.seed)),
        )
    except (TypeError, ValueError):
        raise InputError(f"{source}: bootstrap values must be numbers; got {raw}") from None
    if rule.replicates < 0 or rule.replicates == 1 or not 0 < rule.level < 1:
        raise InputError(
            f"{source}: bootstrap needs replicates 0 (off) or at least 2 and a level in "
            f"(0, 1); got {raw}"
        )
    return rule


def load_spec(path: str | Path, overrides: str = "") -> AnalysisSpec:
    """Read a spec; `overrides` "base_model=/path,sweeps.aufc=smoke-aufc,tasks=[sst2,pos]"
    sets keys (dotted keys set nested ones, values are YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analysis spec {path} does not exist")
    raw = read_yaml(path)
    for key, value in parse_overrides(overrides).items():
        *parents, last = key.split(".")
        place = raw
        for part in parents:
            place = place.setdefault(part, {})
        place[last] = value
    return spec_from_dict(raw, str(path))

"""Sweep specs: every shipped spec parses and expands (without Ray, MLflow or torch),
overrides win, unknown keys are errors, sources are full fine-tuning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from bertrep.sweeps.spec import (
    SOURCE_FIELDS,
    load_spec,
    needs_source,
    parse_overrides,
    source_config,
    sources,
    spec_from_dict,
    split_repeats,
    trials,
)
from bertrep.training.config import TrainConfig

SPECS = sorted((REPO / "sweeps").glob("**/*.yaml"))
SMOKE = REPO / "sweeps" / "smoke" / "aufc.yaml"


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_every_shipped_spec_expands_to_trials(path):
    spec = load_spec(path)
    configs = trials(spec)
    assert configs and len({c.key() for c in configs}) == len(configs)
    assert all(Path(c.data_dir).is_absolute() for c in configs if c.data_dir)
    if spec.kind == "aufc":
        assert any(c.source_task != "base" for c in configs)
        for source in sources(spec, configs):
            assert source.source_task == "base" and source.frozen_layers == 0


def test_paper_spec_is_the_papers_setting():
    everything = trials(load_spec(REPO / "sweeps" / "paper" / "aufc.yaml"))
    (extract,) = [c for c in everything if c.mode == "extract"]  # the pretrained read-out
    assert extract.base_model == "bert-base-uncased"
    assert extract.probe_task_list == ["mnli", "stsb", "sst2", "pos"]
    configs = [c for c in everything if c.mode != "extract"]
    assert {c.task for c in configs} == {"mnli", "stsb", "sst2", "pos"}
    assert {c.frozen_layers for c in configs} == set(range(13))
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.max_steps for c in configs if c.task == "mnli"} == {6000}
    assert {c.max_steps for c in configs if c.task != "mnli"} == {2000}
    assert {(c.lr, c.batch_size, c.max_length) for c in configs} == {(2e-5, 32, 128)}
    assert len(configs) == 4 * 4 * 13 * 3
    # every (source, target) pair off the diagonal, from base too: the whole matrix
    pairs = {(c.source_task, c.task) for c in configs}
    tasks = {"mnli", "stsb", "sst2", "pos"}
    assert pairs == {(s, t) for s in tasks | {"base"} for t in tasks if s != t}
    quick = [c for c in trials(load_spec(REPO / "sweeps" / "quick" / "aufc.yaml"))
             if c.mode != "extract"]  # fmt: skip
    assert {(c.source_task, c.task) for c in quick} == pairs


def test_quick_spec_is_its_documented_recipe():
    """docs/sweeps.md's quick recipe: three seeds, four into STS-B; k = 0 and 3 at 100
    updates of lr 1e-4; k = 6 head-only at a constant rate without warm-up (3e-3 for the
    sentence tasks, 1e-2 for POS), stopped after 10 held-out scores (one per 100 updates)
    without a better one, capped at 8,000 updates, and every seed again at twice the cap;
    MNLI scored on its whole 1,000-pair dev sample."""
    quick = [c for c in trials(load_spec(REPO / "sweeps" / "quick" / "aufc.yaml"))
             if c.mode != "extract"]  # fmt: skip
    assert {c.frozen_layers for c in quick} == {0, 3, 6}
    seeds = {t: (0, 1, 2, 3) if t == "stsb" else (0, 1, 2) for t in ("mnli", "stsb", "sst2", "pos")}
    assert {t: tuple(sorted({c.seed for c in quick if c.task == t})) for t in seeds} == seeds
    partial = [c for c in quick if c.frozen_layers < 6]
    assert {(c.max_steps, c.lr, c.head_lr, c.early_stopping) for c in partial} == {
        (100, 1e-4, 0.0, 0)
    }
    assert {(c.schedule, c.warmup_ratio) for c in partial} == {("linear", 0.1)}
    assert len(partial) == 4 * 2 * (3 + 3 + 3 + 4)  # base and 3 sources, k = 0 and 3, seeds
    head_only = [c for c in quick if c.frozen_layers == 6]
    recipe = {(c.schedule, c.warmup_ratio, c.eval_every, c.early_stopping) for c in head_only}
    assert recipe == {("constant", 0.0, 100, 10)}
    head_lr = {"mnli": 3e-3, "stsb": 3e-3, "sst2": 3e-3, "pos": 1e-2}
    for task, rate in head_lr.items():
        runs = {(c.source_task, c.seed, c.max_steps, c.head_lr)
                for c in head_only if c.task == task}  # fmt: skip
        sources = {"base", "mnli", "stsb", "sst2", "pos"} - {task}
        caps = (8000, 16000)
        assert runs == {(s, seed, n, rate) for s in sources for seed in seeds[task] for n in caps}
    assert {c.max_eval_examples for c in quick if c.task == "mnli"} == {1000}
    assert {c.max_eval_examples for c in quick if c.task != "mnli"} == {300}
    # only the sources and the read-out extract on every probe set
    assert {c.probe_tasks for c in quick if not c.registers_source} == {""}


def test_quick_spec_trains_three_sources_only_for_stsbs_fourth_seed():
    """STS-B's seed-3 runs from MNLI, SST-2 and POS need those tasks' full fine-tuning at
    seed 3: source-only models, which the analysis keeps out of their tasks' best_B."""
    spec = load_spec(REPO / "sweeps" / "quick" / "aufc.yaml")
    grid = trials(spec)
    keys = {c.key() for c in grid}
    extra = {(c.task, c.seed) for c in sources(spec, grid) if c.key() not in keys}
    assert extra == {("mnli", 3), ("sst2", 3), ("pos", 3)}


def test_overrides_win_everywhere():
    spec = load_spec(REPO / "sweeps" / "paper" / "aufc.yaml", "max_steps=10,seed=[5]")
    assert {(c.max_steps, c.seed) for c in trials(spec)} == {(10, 5)}
    spec = load_spec(SMOKE, "base_model=.,resources.cpus_per_trial=2,frozen_layers=[1]")
    assert {c.base_model for c in trials(spec)} == {str(Path.cwd().resolve())}
    assert {c.frozen_layers for c in trials(spec)} == {1}
    assert spec.resources.cpus_per_trial == 2
    assert parse_overrides("a=1,b=[0, 1],c=x=y") == {"a": 1, "b": [0, 1], "c": "x=y"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "aufc", "grids": {}}, "unknown key 'grids'"),
        ({"kind": "aufc", "fixed": {"learning_rate": 1}}, "unknown training parameter "
         "'learning_rate' in fixed"),
        ({"kind": "aufc", "grid": [{"sed": [0]}]}, "unknown training parameter 'sed' in grid"),
        ({"kind": "aufc", "per_task": {"cola": {}}}, "unknown task 'cola' in per_task"),
        ({"kind": "aufc", "resources": {"gpus": 1}}, "unknown key 'gpus' in resources"),
        ({"kind": "aufc", "sources": {"seed": 1}}, "sources cannot set 'seed'"),
        ({"kind": "sweep"}, "kind must be one of"),
    ],
)  # fmt: skip
def test_unknown_keys_are_errors_naming_them(raw, message):
    with pytest.raises(ValueError, match=message):
        spec_from_dict(raw, "x.yaml")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpus_per_trial": 0}, "resources.cpus_per_trial must be > 0, not 0"),
        ({"cpus_per_trial": "two"}, "resources.cpus_per_trial must be a number, not 'two'"),
        ({"gpus_per_trial": -0.5}, "resources.gpus_per_trial must be >= 0, not -0.5"),
        ({"max_failures": 1.5}, "resources.max_failures must be a whole number, not 1.5"),
        ({"max_failures": -1}, "resources.max_failures must be >= 0, not -1"),
        ({"max_concurrent_trials": True}, "resources.max_concurrent_trials must be a whole number"),
    ],
)
def test_bad_resources_are_errors_naming_them(resources, message):
    with pytest.raises(ValueError, match=f"^x.yaml: {message}"):
        spec_from_dict({"kind": "aufc", "resources": resources}, "x.yaml")


def test_resources_default_to_one_retry():
    spec = spec_from_dict({"kind": "aufc", "resources": {"cpus_per_trial": 0.5}}, "x.yaml")
    assert spec.resources.max_failures == 1 and spec.resources.cpus_per_trial == 0.5
    assert load_spec(SMOKE, "resources.max_failures=0").resources.max_failures == 0


def test_bad_values_name_the_spec():
    spec = spec_from_dict({"kind": "single", "grid": {"task": ["sst2", "cola"]}}, "x.yaml")
    with pytest.raises(ValueError, match="x.yaml: unknown task 'cola'"):
        trials(spec)
    with pytest.raises(ValueError, match="unknown training parameter 'maxsteps'"):
        load_spec(SMOKE, "maxsteps=3")


def test_specs_load_without_ray_mlflow_or_torch():
    """Checking a spec is quick: loading and expanding every shipped spec (keys, sources
    included) imports none of the heavy frameworks."""
    code = f"""
import json, sys
from pathlib import Path
from bertrep.sweeps.spec import load_spec, sources, trials
for path in sorted(Path({str(REPO / "sweeps")!r}).glob("**/*.yaml")):
    spec = load_spec(path)
    configs = trials(spec)
    [c.key() for c in configs + sources(spec, configs)]
print(json.dumps(sorted(m for m in ("torch", "ray", "mlflow") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("key", SOURCE_FIELDS)
def test_sources_cannot_set_what_makes_a_source(key):
    with pytest.raises(ValueError, match=f"sources cannot set '{key}'"):
        spec_from_dict({"kind": "aufc", "sources": {key: 0}}, "x.yaml")


def test_a_source_is_full_fine_tuning_with_the_targets_seed():
    raw = {
        "kind": "aufc",
        "fixed": {"max_steps": 7, "lr": 1e-4},
        "per_task": {"sst2": {"max_steps": 9}},
        "sources": {"lr": 3e-4},
        "grid": {"task": "pos", "source_task": ["base", "sst2"], "frozen_layers": [0, 2],
                 "seed": [0, 1]},
    }  # fmt: skip
    spec = spec_from_dict(raw, "x.yaml")
    targets = trials(spec)
    assert [needs_source(t) for t in targets].count(True) == 4
    found = sources(spec, targets)
    assert {s.seed for s in found} == {0, 1} and len(found) == 2
    for target in (t for t in targets if needs_source(t)):
        source = source_config(spec, target)
        assert source.registers_source and source.task == "sst2" and source.seed == target.seed
        assert (source.max_steps, source.lr, source.base_model) == (9, 3e-4, target.base_model)
    first = [t.registers_source for t in targets]  # sources first: best_B is found
    assert first == sorted(first, reverse=True) and any(first)


def test_needs_source_only_where_the_registry_is_asked():
    assert not needs_source(TrainConfig(task="pos"))
    assert needs_source(TrainConfig(task="pos", source_task="sst2"))
    assert not needs_source(TrainConfig(task="pos", source_task="sst2", base_model="models:/m/1"))
    two = {"task": "pos", "source_task": "sst2"}
    assert needs_source(TrainConfig(mode="sequential", **two))
    assert not needs_source(TrainConfig(mode="sequential", source_steps=5, **two))
    assert needs_source(TrainConfig(mode="shuffled", **two))
    reference = "runs:/r/checkpoint"
    assert not needs_source(TrainConfig(mode="shuffled", reference_model=reference, **two))


def test_longer_repeats_of_a_trial_that_repeats_are_split_from_the_grid():
    """A config differing only in a larger max_steps repeats the shortest one where that
    one would repeat update for update (early stopping, constant rate, no warm-up): the
    quick sweep's 16,000-update k = 6 runs. With a linear decay both stay in the grid."""
    head = dict(task="pos", frozen_layers=6, eval_every=100, early_stopping=10)
    constant = dict(head, schedule="constant", warmup_ratio=0.0)
    configs = [TrainConfig(**constant, max_steps=s, seed=seed)
               for seed in (0, 1) for s in (16000, 8000, 32000)]  # fmt: skip
    configs += [TrainConfig(**head, max_steps=s) for s in (8000, 16000)]
    configs += [TrainConfig(task="pos", max_steps=100)]
    assert [c.repeats_when_longer for c in configs[-3:]] == [False, False, False]
    grid, repeats = split_repeats(configs)
    assert [(c.seed, c.max_steps, c.schedule) for c in grid] == [
        (0, 8000, "constant"), (1, 8000, "constant"), (0, 8000, "linear"),
        (0, 16000, "linear"), (0, 100, "linear")]  # fmt: skip
    assert [(r.seed, r.max_steps, s.seed, s.max_steps) for r, s in repeats] == [
        (0, 16000, 0, 8000),
        (0, 32000, 0, 8000),
        (1, 16000, 1, 8000),
        (1, 32000, 1, 8000),
    ]
    quick = trials(load_spec(REPO / "sweeps" / "quick" / "aufc.yaml"))
    _, repeats = split_repeats(quick)
    assert len(repeats) == 52 and {r.max_steps for r, _ in repeats} == {16000}

"""The summary (bertrep.analysis.summary) and the diagnostics' pure parts, on small
tables written here: every section says exactly what its rows say."""

from __future__ import annotations

import pandas as pd

from bertrep.analysis import cells
from bertrep.analysis.collect import TrainRun
from bertrep.analysis.diagnostics import comparisons, driven_cells
from bertrep.analysis.schemas import conform
from bertrep.analysis.spec import AnalysisSpec
from bertrep.analysis.summary import markdown, uncertainty
from bertrep.analysis.tables import Inputs, Missing

TASKS = ("sst2", "pos")


def run(run_id, task="sst2", seed=0, mode="single", k=0, score=0.8, diverged=False):
    return TrainRun(run_id, task, mode, "base", k, seed, "minilm", "minilm", f"key{k}",
                    diverged, 6, score, 0.5)  # fmt: skip


def tables() -> dict[str, pd.DataFrame]:
    """Two targets: SST-2 learned from base (two seeds, an interval) and from POS (at
    chance); POS never trained. One missing input, one sequential run, one rogue cell."""
    aufc = [
        {"source": "base", "target": "sst2", "variant": "aufc", "value": 0.8125, "seeds": 2,
         "ci_low": 0.5, "ci_high": 1.125, "ci_level": 0.95, "near_floor": False,
         "status": cells.OK},
        {"source": "pos", "target": "sst2", "variant": "aufc", "value": float("nan"),
         "seeds": 2, "status": cells.AT_CHANCE},
    ]  # fmt: skip
    mean_cka = [
        {"source": "base", "target": "sst2", "estimator": "biased", "value": 0.9431,
         "ci_low": 0.93, "ci_high": 0.95, "ci_level": 0.95, "near_floor": True,
         "floor": 0.94, "status": cells.SINGLE_SEED},
    ]  # fmt: skip
    raw = {
        "runs": pd.DataFrame([{"run_id": "a", "root_model": "minilm"}]),
        "aufc": pd.DataFrame(aufc),
        "mean_cka": pd.DataFrame(mean_cka),
        "best": pd.DataFrame([
            {"task": "sst2", "metric": "accuracy", "best": 0.75, "chance": 0.5, "runs": 2,
             "status": cells.OK},
            {"task": "pos", "metric": "accuracy", "best": float("nan"), "chance": 0.226,
             "runs": 0, "status": cells.MISSING},
        ]),
        "forgetting_summary": pd.DataFrame([
            {"run_id": "s", "mode": "sequential", "task_a": "sst2", "task_b": "pos",
             "scored": "A", "task": "sst2", "first": 0.9, "last": 0.4, "forgotten": 0.5,
             "seed": 0},
            {"run_id": "s", "mode": "sequential", "task_a": "sst2", "task_b": "pos",
             "scored": "B", "task": "pos", "first": float("nan"), "last": float("nan"),
             "forgotten": float("nan"), "seed": 0},
        ]),
        "missing": pd.DataFrame([{"what": "AuFC cell base->pos", "detail": "no runs",
                                  "command": "bertrep sweep --spec sweeps/smoke/aufc.yaml"}]),
        "indistinguishable": pd.DataFrame([
            {"matrix": "aufc", "target": "sst2", "source": "base", "best_source": "base",
             "tied_with_best": True},
        ]),
        "rogue_dims": pd.DataFrame([
            {"probe_task": "sst2", "run_id": "a", "label": "sst2 from base, k=0, seed 0",
             "hidden": 1, "top1": 0.25, "top3": 0.5},
            {"probe_task": "sst2", "run_id": "a", "label": "sst2 from base, k=0, seed 0",
             "hidden": 2, "top1": 0.625, "top3": 0.75},
        ]),
        "rogue_profiles": pd.DataFrame([
            {"probe_task": "sst2", "kind": "seeds", "hidden_x": 2, "hidden_y": 2,
             "top_dim_share": 0.75},
            {"probe_task": "sst2", "kind": "seeds", "hidden_x": 1, "hidden_y": 2,
             "top_dim_share": 0.5},
        ]),
    }  # fmt: skip
    empty = ("scores", "transfer_k0", "profiles", "correlation", "transferability",
             "forgetting", "forgetting_cka")  # fmt: skip
    return conform(raw | {name: pd.DataFrame() for name in empty})


def test_markdown_says_what_the_tables_hold():
    spec = AnalysisSpec(name="tiny", tasks=TASKS, estimators=("biased",))
    text = markdown(spec, tables(), {"single": "p1", "aufc": "p2"})
    lines = text.splitlines()
    assert lines[0] == "# Analysis tiny"
    assert lines[2] == (
        "1 finished runs from sweeps single `p1`, aufc `p2`; base model `minilm`; "
        "estimators biased (headline: biased); blocks 1..L."
    )
    aufc = lines.index("## AuFC") + 2
    assert lines[aufc : aufc + 5] == [
        "| source \\ target | sst2 | pos |",
        "|---|---|---|",
        "| sst2 | missing | missing |",
        "| pos | at chance | missing |",
        "| base | 0.812 | missing |",
    ]
    assert "| base | 0.943 (single seed) | missing |" in lines
    assert f"- *at chance*: {cells.MEANING[cells.AT_CHANCE]}" in lines
    assert "- sst2: accuracy 0.7500 over 2 runs (chance 0.5000)" in lines
    assert "- pos: accuracy — over 0 runs (chance 0.2260): missing" in lines
    assert "- sequential sst2→pos seed 0, sst2 (A): 0.900 → 0.400 (forgot 0.500)" in lines
    assert "- sequential sst2→pos seed 0, pos (B): — → — (missing: no normalized score)" in lines
    # the AuFC figures cannot be drawn: no cell of aufc_paper or transfer_k0 has a number
    assert any(line.startswith("- `aufc_paper.png`: no cell has a number") for line in lines)
    assert "- AuFC cell base->pos: no runs — `bertrep sweep --spec sweeps/smoke/aufc.yaml`" in lines
    assert lines[-1] == "Tables: `tables/`; figures: `figures/`."


def test_uncertainty_sections_read_intervals_ties_and_rogue_dimensions():
    lines = uncertainty(tables(), TASKS)
    text = "\n".join(lines)
    assert lines[0] == "## How sure: 95% intervals"
    assert "| base | 0.943 (single seed) [0.930, 0.950] ≤ | missing |" in text  # ≤: floor
    assert "| pos | at chance | missing |\n| base | 0.812 [0.500, 1.125] | missing |" in text
    assert "Widest AuFC half-width per target: sst2 ±0.312 (from base)." in lines
    assert "- aufc, target sst2: best base; cannot be told apart from it: base" in lines
    assert (
        "- Mean-CKA floors (every cross profile at its permutation floor): 0.940 to 0.940." in lines
    )
    assert "- Seed-noise band: needs three or more seeds of a target." in lines
    top = "- sst2: largest single-dimension variance share 0.62 (sst2 from base, k=0, seed 0, "
    assert top + "layer 2)" in lines
    warning = [line for line in lines if line.startswith("- WARNING")]
    assert warning == [
        "- WARNING: in 1 profile cells one dimension holds more than half of the CKA "
        "numerator, e.g. sst2 seeds (2, 2) 0.75"
    ]


def test_without_intervals_or_diagnostics_those_sections_are_left_out():
    few = {k: v for k, v in tables().items() if k not in ("indistinguishable", "rogue_dims")}
    assert uncertainty(few, TASKS) == []


def test_driven_cells_are_those_over_half_of_the_numerator():
    rogue = tables()["rogue_profiles"]
    assert driven_cells(rogue).top_dim_share.tolist() == [0.75]  # 0.5 exactly is not over
    assert driven_cells(rogue.iloc[:0]).empty


def test_diagnostics_compare_two_seeds_and_the_pretrained_model():
    runs = [run("s1", seed=1), run("s0"), run("p", mode="extract"), run("x", task="pos")]
    inputs = Inputs(runs, None, TASKS, ("biased",), False, [])
    assert [(kind, x.run_id, y.run_id) for kind, x, y in comparisons(inputs, "sst2")] == [
        ("seeds", "s0", "s1"),
        ("pretrained", "p", "s0"),
    ]
    assert [(kind, x.run_id, y.run_id) for kind, x, y in comparisons(inputs, "pos")] == [
        ("pretrained", "p", "x")
    ]
    failed = Inputs([run("s0", diverged=True)], None, TASKS, ("biased",), False, [])
    assert comparisons(failed, "sst2") == []
    assert Missing("x", "y").kind == "aufc"

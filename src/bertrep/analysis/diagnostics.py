"""What lies under a profile: rogue dimensions and token subgroups, per task, on two
comparisons: two seeds of full fine-tuning (`seeds`) and the pretrained model against
seed 0 (`pretrained`).

    dims, rogue = rogue_tables(inputs)    # variance shares; raw vs standardized CKA
    groups = subgroup_profiles(inputs)    # first sub-token / continuation (+ POS tags)

Rogue dimensions (Timkey & van Schijndel 2021): per layer the variance share of its
largest 1 and 3 dimensions; per cell of the profile the biased CKA raw and with every
dimension standardized, and the largest share one dimension holds of the CKA numerator
(over 0.5: that dimension drives the cell). Subgroup profiles restrict both models'
rows to one kind of probe token (bertrep.analysis.probe_labels); a subgroup with fewer than
`min_tokens` probe tokens (the spec's `subgroup_min_tokens`) is left out.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from bertrep.analysis.cells import FLOAT, INT, TEXT, typed
from bertrep.analysis.collect import MissingInput, TrainRun
from bertrep.analysis.probe_labels import probe_labels
from bertrep.analysis.tables import Inputs, Missing
from bertrep.data import activations
from bertrep.maths.cka import cka_profile, cka_profiles
from bertrep.maths.rogue import dimension_share_profile, standardize, variance_shares

DRIVEN = 0.5  # one dimension's share of a cell's CKA numerator that earns a warning


def comparisons(inputs: Inputs, task: str) -> list[tuple[str, TrainRun, TrainRun]]:
    """(kind, x, y) of the task's two comparisons its runs allow: two seeds of full
    fine-tuning, and the pretrained model against seed 0."""
    ok = inputs.full_fine_tuning(task)
    out = [("seeds", ok[0], ok[1])] if len(ok) >= 2 else []
    base = inputs.pretrained()
    if ok and base:
        out.append(("pretrained", base[0], ok[0]))
    return out


def _pair_states(inputs: Inputs, x: TrainRun, y: TrainRun, task: str, digest: str = ""):
    """Both runs' blocks 1..L on the task's probe set, (L, n, p) float32 each, after the
    tables are shown comparable (and of probe set `digest`, if given)."""
    paths = [inputs.store.activations(run, task) for run in (x, y)]
    activations.check_comparable(*paths)
    found = activations.read_meta(paths[0])["probe_digest"]
    if digest and found != digest:
        raise activations.TableError(f"{paths[0]} is of probe set {found}, not {digest}")
    return [
        activations.read_states(path, list(range(1, run.num_layers + 1))).astype(np.float32)
        for path, run in zip(paths, (x, y), strict=True)
    ]


def _skip(inputs: Inputs, what: str, error: Exception) -> None:
    inputs.missing.append(Missing(what, str(error), "aufc"))


def rogue_tables(inputs: Inputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dims, profiles): per (task, model, hidden state) the variance share of its top 1
    and top 3 dimensions; per comparison cell the raw and standardized CKA and the
    largest single-dimension share."""
    dims, cells, seen = [], [], set()
    for task in inputs.tasks:
        for kind, x, y in comparisons(inputs, task):
            try:
                sx, sy = _pair_states(inputs, x, y, task)
            except (MissingInput, activations.TableError) as error:
                _skip(inputs, "rogue", error)
                continue
            for run, states in ((x, sx), (y, sy)):
                if (task, run.run_id) in seen:
                    continue
                seen.add((task, run.run_id))
                for h, layer in enumerate(states, start=1):
                    top = variance_shares(layer, top=3)
                    dims.append({"probe_task": task, "run_id": run.run_id, "label": run.label,
                                 "hidden": h, "top1": top[0], "top3": top[2]})  # fmt: skip
            raw = cka_profile(sx, sy)
            standard = cka_profile([standardize(a) for a in sx], [standardize(b) for b in sy])
            share = dimension_share_profile(sx, sy)
            for i, j in itertools.product(range(len(sx)), range(len(sy))):
                cells.append(
                    {"probe_task": task, "kind": kind, "run_x": x.run_id, "label_x": x.label,
                     "run_y": y.run_id, "label_y": y.label, "hidden_x": i + 1,
                     "hidden_y": j + 1, "cka": raw[i, j], "cka_standardized": standard[i, j],
                     "top_dim_share": share[i, j]}
                )  # fmt: skip
    return typed(dims, DIMS_COLUMNS), typed(cells, ROGUE_COLUMNS)


DIMS_COLUMNS = {"probe_task": TEXT, "run_id": TEXT, "label": TEXT, "hidden": INT,
                "top1": FLOAT, "top3": FLOAT}  # fmt: skip
ROGUE_COLUMNS = {"probe_task": TEXT, "kind": TEXT, "run_x": TEXT, "label_x": TEXT,
                 "run_y": TEXT, "label_y": TEXT, "hidden_x": INT, "hidden_y": INT,
                 "cka": FLOAT, "cka_standardized": FLOAT, "top_dim_share": FLOAT}  # fmt: skip


def subgroup_profiles(inputs: Inputs, min_tokens: int = 100) -> pd.DataFrame:
    """Profiles (headline estimator) of each comparison restricted to each token
    subgroup, one row per cell."""
    rows = []
    for task in inputs.tasks:
        pairs = comparisons(inputs, task)
        if not pairs:
            continue
        owner = pairs[0][2]
        try:
            labels = probe_labels(
                task, owner.probe_digests.get(task, ""), owner.root_model, owner.params
            )
        except MissingInput as error:
            inputs.missing.append(Missing("subgroups", str(error), "single"))
            continue
        groups = {g: labels.group == g for g in ("first", "continuation")}
        if labels.kind == "tagging":
            groups |= {f"tag {t}": labels.tag == t for t in np.unique(labels.tag)}
        for kind, x, y in pairs:
            try:
                sx, sy = _pair_states(inputs, x, y, task, labels.digest)
            except (MissingInput, activations.TableError) as error:
                _skip(inputs, "subgroups", error)
                continue
            for group, mask in groups.items():
                if mask.sum() < min_tokens:
                    continue
                headline = inputs.estimators[:1]
                profiles = cka_profiles(sx[:, mask], sy[:, mask], headline)
                for estimator, profile in profiles.items():
                    for i, j in itertools.product(range(len(sx)), range(len(sy))):
                        rows.append(
                            {"probe_task": task, "kind": kind, "group": group,
                             "n": int(mask.sum()), "estimator": estimator,
                             "run_x": x.run_id, "run_y": y.run_id, "hidden_x": i + 1,
                             "hidden_y": j + 1, "cka": profile[i, j]}
                        )  # fmt: skip
    return typed(rows, SUBGROUP_COLUMNS)


SUBGROUP_COLUMNS = {"probe_task": TEXT, "kind": TEXT, "group": TEXT, "n": INT, "estimator": TEXT,
                    "run_x": TEXT, "run_y": TEXT, "hidden_x": INT, "hidden_y": INT,
                    "cka": FLOAT}  # fmt: skip


def driven_cells(rogue: pd.DataFrame) -> pd.DataFrame:
    """The cells whose CKA numerator one dimension holds more than half of."""
    if rogue.empty:
        return rogue
    return rogue[rogue.top_dim_share.to_numpy(dtype=float) > DRIVEN]

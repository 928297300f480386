"""Every table of the analysis by name, with its typed columns (bertrep.analysis.cells), and
tables read back from a logged run made to them: an older run's tables (without a
`status` column, or empty and column-less) redraw as a new run's do.

    tables = conform(collect.read_tables(run_id, folder))     # what `make figures` draws
"""

from __future__ import annotations

import pandas as pd

from bertrep.analysis.across import CROSS_COLUMNS, SIDE_BY_SIDE_COLUMNS
from bertrep.analysis.cells import FLOAT, INT, TEXT, typed
from bertrep.analysis.convergence import CONVERGENCE_COLUMNS
from bertrep.analysis.diagnostics import DIMS_COLUMNS, ROGUE_COLUMNS, SUBGROUP_COLUMNS
from bertrep.analysis.forgetting import FORGETTING_COLUMNS, FORGETTING_SUMMARY_COLUMNS
from bertrep.analysis.intervals import AUFC_INTERVAL_COLUMNS, SEED_BAND_COLUMNS, TIES_COLUMNS
from bertrep.analysis.predictors import LOGME_COLUMNS, PREDICTOR_CELL_COLUMNS, PREDICTOR_COLUMNS
from bertrep.analysis.profiles import MEAN_CKA_COLUMNS, PROFILE_COLUMNS
from bertrep.analysis.tables import (
    BEST_COLUMNS,
    CELL_COLUMNS,
    K0_COLUMNS,
    SCORE_COLUMNS,
    SEED_COLUMNS,
)

TRANSFERABILITY_COLUMNS = {"metric": TEXT, "source": TEXT, "targets": INT, "value": FLOAT}
CORRELATION_COLUMNS = {"x": TEXT, "y": TEXT, "cells": INT, "pearson": FLOAT, "spearman": FLOAT,
                       "note": TEXT}  # fmt: skip
MISSING_COLUMNS = {"what": TEXT, "detail": TEXT, "command": TEXT}

SCHEMAS: dict[str, dict[str, str]] = {
    "best": BEST_COLUMNS,
    "scores": SCORE_COLUMNS,
    "aufc": CELL_COLUMNS | AUFC_INTERVAL_COLUMNS,
    "aufc_seeds": SEED_COLUMNS,
    "convergence": CONVERGENCE_COLUMNS,
    "transfer_k0": K0_COLUMNS,
    "mean_cka": MEAN_CKA_COLUMNS,
    "profiles": PROFILE_COLUMNS,
    "forgetting": FORGETTING_COLUMNS,
    "forgetting_cka": PROFILE_COLUMNS,
    "forgetting_summary": FORGETTING_SUMMARY_COLUMNS,
    "transferability": TRANSFERABILITY_COLUMNS,
    "correlation": CORRELATION_COLUMNS,
    "seed_band": SEED_BAND_COLUMNS,
    "indistinguishable": TIES_COLUMNS,
    "rogue_dims": DIMS_COLUMNS,
    "rogue_profiles": ROGUE_COLUMNS,
    "subgroups": SUBGROUP_COLUMNS,
    "logme": LOGME_COLUMNS,
    "predictor_cells": PREDICTOR_CELL_COLUMNS,
    "predictors": PREDICTOR_COLUMNS,
    "missing": MISSING_COLUMNS,
    "base_models": SIDE_BY_SIDE_COLUMNS,  # with several base models (analysis/across.py)
    "cross_model_cka": CROSS_COLUMNS,
}


def conform(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each known table with its columns typed (absent ones added, all missing); others,
    such as `runs`, as they are."""
    return {name: typed(frame, SCHEMAS[name]) if name in SCHEMAS else frame
            for name, frame in tables.items()}  # fmt: skip

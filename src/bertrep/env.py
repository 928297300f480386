"""Environment variables the project reads or sets: each name spelled here once.

    BERTREP_DATA_DIR=../shared/data BERTREP_CACHE_DIR=/tmp/bertrep python -m bertrep.train

Imports nothing heavy, so any module (configs, specs, tasks) may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

# bertrep's own
DATA_DIR = "BERTREP_DATA_DIR"  # the local data folder when a config names none
STORE = "BERTREP_STORE"  # the store behind the server bertrep.study shares with its stages
CACHE_DIR = "BERTREP_CACHE_DIR"  # tokenized splits, downloaded models (~/.cache/bertrep)
TASKS_DIR = "BERTREP_TASKS"  # a folder of task files: own tasks by short name

# Hugging Face: where the hub cache lies, and whether to stay offline
HF_HOME = "HF_HOME"
HF_HUB_OFFLINE = "HF_HUB_OFFLINE"
TRANSFORMERS_OFFLINE = "TRANSFORMERS_OFFLINE"

# MLflow's own (`mlflow run` sets the run and experiment)
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_RUN_ID = "MLFLOW_RUN_ID"
MLFLOW_EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"  # off for ours
MLFLOW_EXPERIMENT_ID = "MLFLOW_EXPERIMENT_ID"
# a progress bar per downloaded file: hundreds of lines in an analysis
MLFLOW_ARTIFACTS_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
MLFLOW_SUPPRESS_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # its "View run ... at" line

# Ray's own: the cluster a sweep joins (ray.init reads it); unset: a local instance
RAY_ADDRESS = "RAY_ADDRESS"
RAY_AIR_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"  # "0": Tune's older console output, silent at verbose=0

# What a sweep's trials need on any node (workers of a separate Ray cluster do not
# inherit the driver's environment); the sweep adds MLFLOW_TRACKING_URI, its server.
FORWARDED = (DATA_DIR, CACHE_DIR, TASKS_DIR, HF_HOME, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)


def cache_root() -> Path:
    """$BERTREP_CACHE_DIR, else ~/.cache/bertrep."""
    return Path(os.environ.get(CACHE_DIR, Path.home() / ".cache" / "bertrep"))


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off limits ($HF_HUB_OFFLINE set true)."""
    return os.environ.get(HF_HUB_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")

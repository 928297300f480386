"""How a task is scored: its metrics on predictions, and chance (the majority-class
predictor's score; 0 for a correlation).

    >>> score(get_task("stsb"), predictions, labels)["pearson"]
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from bertrep.data.tasks import Example, TaskSpec


def chance_score(spec: TaskSpec, examples: list[Example]) -> float:
    """Score of the majority-class predictor on `examples` (0 for a correlation metric)."""
    if spec.kind == "regression":
        return 0.0
    if spec.kind == "tagging":
        counts = Counter(t for ex in examples for t in ex.label)  # type: ignore[union-attr]
    else:
        counts = Counter(ex.label for ex in examples)
    return max(counts.values()) / sum(counts.values())


def score(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Task metrics; the key `spec.metric` is the one reported and normalized.

    predictions, labels: (n,) class indices, (n,) floats (regression), or (n_words,)
    tag indices of the scored (first) sub-tokens (tagging).
    """
    if spec.kind == "regression":
        from scipy.stats import pearsonr, spearmanr

        if len(labels) < 2 or np.std(predictions) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearman": float(spearmanr(predictions, labels)[0]),
        }
    return {"accuracy": float(np.mean(predictions == labels))}

"""How a task is scored: every metric of its kind on predictions, and chance.

    scores = score(spec, predictions, labels)      # {"accuracy": ..., "f1_macro": ..., ...}
    scores[spec.metric]                            # the one reported and normalized

Chance is the metric of the constant prediction of the majority class (accuracy: that
class's share; f1_macro: its F1 over the classes present; mcc: 0), and 0 for the
correlations; tagging is scored per word (its first sub-token), as accuracy.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from bertrep.data.readers import Example
from bertrep.data.task_spec import TaskSpec


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The unweighted mean of each class's F1, over the classes that occur among the
    labels or the predictions (scikit-learn's convention); 0 for a class never right."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in np.union1d(predictions, labels):
        hit = np.sum((predictions == c) & (labels == c))
        told, true = np.sum(predictions == c), np.sum(labels == c)
        scores.append(2 * hit / (told + true) if told + true else 0.0)
    return float(np.mean(scores))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews' correlation for any number of classes (Gorodkin's R_K); 0 where a side
    is constant."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(predictions, labels)
    told = np.array([np.sum(predictions == c) for c in classes], dtype=float)
    true = np.array([np.sum(labels == c) for c in classes], dtype=float)
    n, right = float(len(labels)), float(np.sum(predictions == labels))
    denominator = np.sqrt((n * n - told @ told) * (n * n - true @ true))
    return float((right * n - told @ true) / denominator) if denominator > 0 else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predictions, labels)[0])


CLASS_METRICS = {"accuracy": accuracy, "f1_macro": f1_macro, "mcc": mcc}
CORRELATIONS = {"pearson": pearson, "spearman": spearman}


def score(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of the task's kind; the key `spec.metric` is the one reported.

    predictions, labels: (n,) class indices, (n,) floats (regression), or (n_words,)
    tag indices of the scored (first) sub-tokens (tagging).
    """
    if spec.kind == "regression":
        if len(labels) < 2 or np.std(predictions) == 0 or np.std(labels) == 0:
            return dict.fromkeys(CORRELATIONS, 0.0)
        return {name: f(predictions, labels) for name, f in CORRELATIONS.items()}
    if spec.kind == "tagging":
        return {"accuracy": accuracy(predictions, labels)}
    return {name: f(predictions, labels) for name, f in CLASS_METRICS.items()}


def chance_score(spec: TaskSpec, examples: list[Example]) -> float:
    """The task's metric for the constant prediction of the majority class of `examples`
    (0 for a correlation)."""
    if spec.kind == "regression":
        return 0.0
    if spec.kind == "tagging":
        labels = np.array([t for ex in examples for t in ex.label])  # type: ignore[union-attr]
    else:
        labels = np.array([ex.label for ex in examples])
    majority = Counter(labels.tolist()).most_common(1)[0][0]
    return score(spec, np.full_like(labels, majority), labels)[spec.metric]

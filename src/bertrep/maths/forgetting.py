"""Forgetting numerics: how far a model drifts from the model tuned on task A alone while
it learns task B, and how much of A it loses. Pure functions on arrays; no I/O.

    from bertrep.maths.forgetting import drift, forgotten
    per_layer = drift(reference_states, current_states)     # (L + 1,) CKA, same h
    lost = forgotten(norm_a)                                 # drop of A's normalized score

Hidden state h = 0..L (h = 0 the embedding output, h = l block l's output).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bertrep.maths.cka import cka_profile

__all__ = ["drift", "forgotten"]


def drift(reference: Any, current: Any, *, debiased: bool = False) -> np.ndarray:
    """CKA of each hidden state of `current` against the same hidden state of `reference`.

    reference, current: (H, N, width) states of the same probe rows (H = L + 1, or any
    selection of hidden states, the same on both sides). Returns (H,) float64: 1 where a
    layer did not move (up to rotation and isotropic scaling), lower as it drifts.
    """
    ref, cur = np.asarray(reference), np.asarray(current)
    if ref.ndim != 3 or ref.shape[:2] != cur.shape[:2]:
        raise ValueError(
            f"states must be (H, N, width) with equal H and N: {ref.shape}, {cur.shape}"
        )
    return np.array(
        [cka_profile([r], [c], debiased=debiased)[0, 0] for r, c in zip(ref, cur, strict=True)]
    )


def forgotten(norm_scores: Any) -> float:
    """What A lost over the B phase: its normalized score at the first checkpoint minus at
    the last. norm_scores: (C,) in checkpoint order; 0 when nothing was forgotten."""
    s = np.asarray(norm_scores, dtype=np.float64)
    if s.ndim != 1 or len(s) < 2:
        raise ValueError(f"need the scores of at least two checkpoints; got shape {s.shape}")
    return float(s[0] - s[-1])

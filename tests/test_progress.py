"""The sweep's progress lines (bertrep.sweeps.progress); a real sweep's are checked in
test_sweep."""

from __future__ import annotations

import pytest

from bertrep.sweeps.progress import duration, time_left


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (44.6, "45s"), (60, "1m00s"), (511, "8m31s"), (3599, "59m59s"), (3720, "1h02m")],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_time_left_at_the_pace_so_far():
    assert time_left(100.0, 0, 10) == "time left unknown"
    # 4 trials ended in 120 s (side by side or not): 30 s per trial, 6 to go
    assert time_left(120.0, 4, 6) == "~3m00s left"
    assert time_left(120.0, 10, 0) == "none left"

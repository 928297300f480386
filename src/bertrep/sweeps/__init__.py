"""Sweeps: the spec (YAML grid -> trial configs), a sweep's parent and trial runs in
MLflow, and its progress lines. The Ray Tune driver is `bertrep.sweep`."""

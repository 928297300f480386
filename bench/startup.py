"""What a sweep pays before its first trial: the tracking server's start and Ray's, one
after the other (as sweeps did) and overlapped (as `bertrep.sweep` does now).

    .venv/bin/python bench/startup.py            # 3 rounds of each, alternating

Each round starts a real `mlflow server` on a fresh SQLite store (through
bertrep.tracking.server, as a sweep does) and a real local Ray instance (`ray.init`), and stops
both. Printed: seconds to "both ready" per round, the medians, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import ray

from bertrep.tracking import server


def one_round(folder: Path, overlapped: bool) -> dict[str, float]:
    store = f"sqlite:///{folder / 'mlflow.db'}"
    began = time.perf_counter()
    with server.starting(store, folder / "outputs") as served:
        if not overlapped:
            served.wait()
        server_up = time.perf_counter() - began
        ray.init(include_dashboard=False, num_cpus=2)
        ray_up = time.perf_counter() - began
        served.wait()
        ready = time.perf_counter() - began
        ray.shutdown()
    if overlapped:
        server_up = ready  # known only once waited for
    return {"server": server_up, "ray": ray_up, "ready": ready}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print(f"# sweep start-up: tracking server and Ray, {args.rounds} rounds of each, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    ready: dict[str, list[float]] = {"one after the other": [], "overlapped": []}
    print(f"{'round':>5}  {'mode':<20} {'server up':>9} {'ray up':>7} {'both ready':>10}")
    for i in range(args.rounds):
        for name in ready:
            with tempfile.TemporaryDirectory() as tmp:
                t = one_round(Path(tmp), overlapped=name == "overlapped")
            ready[name].append(t["ready"])
            print(f"{i:>5}  {name:<20} {t['server']:9.2f} {t['ray']:7.2f} {t['ready']:10.2f}")
    seq, over = (statistics.median(v) for v in ready.values())
    print(f"median seconds to both ready: one after the other {seq:.2f}, overlapped {over:.2f} "
          f"({seq - over:.2f} s less, ratio {over / seq:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

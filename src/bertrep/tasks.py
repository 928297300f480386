"""`python -m bertrep.tasks --data_dir DIR` (`bertrep tasks`): every known task (built-in,
and own ones in $BERTREP_TASKS), its splits, their sizes and chance scores, and where
they are read from. The task specs and loaders are `bertrep.data.tasks`."""

from __future__ import annotations

import argparse
import sys

from bertrep.data.metrics import chance_score
from bertrep.data.tasks import DataError, get_task, known_tasks, load_split


def main(argv: list[str] | None = None) -> None:
    """Check every known task's data: splits, sizes, chance scores, sources."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    for name in known_tasks():
        try:
            spec = get_task(name)
        except (ValueError, FileNotFoundError) as e:
            print(f"{name:8s} -- {e}", file=sys.stderr)
            continue
        for split in spec.splits:
            try:
                examples, source = load_split(spec, split, data_dir=args.data_dir)
            except (FileNotFoundError, DataError, ValueError) as e:
                print(f"{spec.name:8s} {split:22s} -- {e}", file=sys.stderr)
                continue
            print(
                f"{spec.name:8s} {split:22s} {len(examples):7d}  chance "
                f"{chance_score(spec, examples):.3f}  {source}"
            )


if __name__ == "__main__":
    main()

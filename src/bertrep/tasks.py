"""`python -m bertrep.tasks --data_dir DIR` (`bertrep tasks`): check a data folder, every
task's splits, their sizes and chance scores. The task specs and loaders are
`bertrep.data.tasks`."""

from __future__ import annotations

import argparse
import sys

from bertrep.data.metrics import chance_score
from bertrep.data.tasks import TASKS, DataError, load_split


def main(argv: list[str] | None = None) -> None:
    """`python -m bertrep.tasks --data_dir DIR`: check every task's files and print counts."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    for spec in TASKS.values():
        for split in spec.splits:
            try:
                examples, source = load_split(spec, split, data_dir=args.data_dir)
            except (FileNotFoundError, DataError) as e:
                print(f"{spec.name:5s} {split:22s} -- {e}", file=sys.stderr)
                continue
            print(
                f"{spec.name:5s} {split:22s} {len(examples):7d}  chance "
                f"{chance_score(spec, examples):.3f}  {source}"
            )


if __name__ == "__main__":
    main()

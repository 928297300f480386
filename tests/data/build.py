"""Write this folder's fixture: the first rows of each task's offline data files, in the
layout `bertrep.data.tasks` reads, so golden tests run where no data folder exists.

    python tests/data/build.py ../shared/data      # rewrites tests/data/<task>/...

Rows are copied as they are (header kept; CoNLL-2003 cut at sentence boundaries, its
-DOCSTART- lines kept). Where the rows come from: the data folder's SOURCES.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
TRAIN, EVAL = 64, 48  # rows (sentences) of the training and the evaluation split
FILES = {  # fixture file -> (file in the data folder, rows)
    "sst2/train.tsv": ("sst2/train.tsv", TRAIN),
    "sst2/dev.tsv": ("sst2/dev.tsv", EVAL),
    "stsb/train.tsv": ("stsb/train.tsv", TRAIN),
    "stsb/dev.tsv": ("stsb/dev.tsv", EVAL),
    "rte/train.tsv": ("rte/train.tsv", TRAIN),
    "rte/dev.tsv": ("rte/dev.tsv", EVAL),
    "mnli/train.tsv": ("mnli/train_sample_9999.tsv", TRAIN),
    "mnli/dev_matched.tsv": ("mnli/dev_matched_textfooler1k_tok.tsv", EVAL),
    "mnli/dev_mismatched.tsv": ("mnli/dev_mismatched_textfooler1k_tok.tsv", EVAL),
    "conll2003/train.txt": ("conll2003/train.txt", TRAIN),
    "conll2003/valid.txt": ("conll2003/valid.txt", EVAL),
}


def head_rows(path: Path, rows: int) -> str:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if path.suffix == ".tsv":
        return "".join(lines[: rows + 1])  # the header and `rows` rows
    out, sentences = [], 0
    for line in lines:  # CoNLL: a blank line ends a sentence
        out.append(line)
        if not line.strip() and out[-2:-1] and not out[-2].startswith("-DOCSTART-"):
            sentences += 1
            if sentences == rows:
                break
    return "".join(out)


def main(data_dir: str) -> None:
    for target, (source, rows) in FILES.items():
        path = HERE / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(head_rows(Path(data_dir) / source, rows), encoding="utf-8")
        print(f"{target}: {rows} rows of {source}")


if __name__ == "__main__":
    main(sys.argv[1])

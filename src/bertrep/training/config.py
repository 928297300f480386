"""The training configuration: one name per concept, end to end.

A `TrainConfig` field is also the CLI flag (`--frozen_layers`), the MLproject
parameter, the MLflow param and the sweep key. Every default is here.
Runtime flags (precision, where to log) are kept apart in `Runtime`.

    python -m bertrep.train --task pos --frozen_layers 3 --save_checkpoint false

A run's identity (`TrainConfig.key`) is what it is, not where its files lie: the data
it reads and a local `base_model` folder count by content, so either may move.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bertrep.data import identity, tasks
from bertrep.data.identity import MINILM
from bertrep.errors import InputError

MODES = ("single", "sequential", "shuffled", "extract")
POOLINGS = ("auto", "pooler", "first", "mean")
SCHEDULES = ("linear", "constant")
# Fields added after stores held runs: at these defaults they stay out of the config key,
# so runs stored before them keep their keys (and are found, resumed and skipped).
KEYED_OFF_DEFAULT = {
    "pooling": "auto",
    "head_dropout": 0.1,
    "untie_blocks": False,
    "word_probes": "",
    "head_lr": 0.0,
    "early_stopping": 0,
    "schedule": "linear",
}
TWO_TASK_MODES = ("sequential", "shuffled")  # A = source_task, then or mixed with B = task
# What of a local base_model folder makes the model: config, heads, tokenizer, weights.


@dataclass(frozen=True)
class TrainConfig:
    # what to train
    task: str = "sst2"  # sst2 | stsb | mnli | rte | pos, a task file (.yaml) or its name
    base_model: str = MINILM  # hub id, local folder, `minilm`, or models:/ runs:/ URI
    source_task: str = "base"  # the task base_model was fine-tuned on ("base": pretrained)
    frozen_layers: int = 0  # k: embeddings and blocks 1..k frozen (0: nothing frozen)
    seed: int = 0
    # heads: sequence pooling auto (BERT's pooler for BERT, else the first token) |
    # pooler | first | mean, and their dropout
    pooling: str = "auto"
    head_dropout: float = 0.1
    untie_blocks: bool = False  # ALBERT: each block its own copy of the shared weights
    # two-task training (forgetting): A = source_task, B = task
    # single | sequential (A, then B) | shuffled (A and B mixed) | extract (no training:
    # base_model's activations on the probe sets, e.g. the pretrained model's)
    mode: str = "single"
    source_steps: int = 0  # sequential: updates on A first, unless base_model has A's head
    checkpoints: str = "0,0.1,0.3,0.5,0.7,1.0"  # fractions of the B phase scored and probed
    sampling: str = "proportional"  # shuffled: draw A or B uniform | proportional to size
    reference_model: str = ""  # shuffled: the model tuned on A alone; empty: the registry
    # optimisation (Mosbach et al. 2021: AdamW with bias correction, warm-up 10%, then decay)
    lr: float = 2e-5
    # the heads' (and BERT's pooler's) learning rate (0: lr). A new head on frozen features
    # wants a larger one than the encoder (docs/training.md: the recipe of frozen trials)
    head_lr: float = 0.0
    batch_size: int = 32
    max_steps: int = 2000
    warmup_ratio: float = 0.1
    # after warm-up: linear decay to 0 at max_steps | constant. Constant, without warm-up,
    # makes a run with more max_steps repeat a shorter one update for update
    schedule: str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # data
    max_length: int = 128
    max_train_examples: int = 0  # 0: all; else a seeded subsample
    max_eval_examples: int = 0  # 0: all; else the first n of the eval split
    data_dir: str = ""  # local data folder; empty: $BERTREP_DATA_DIR, else the HF hub
    data_files: str = ""  # other file names per split, "train=a.tsv,validation=b.tsv"
    # evaluation and probing
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    # stop after this many evaluations (every eval_every updates, on a held-out tenth of
    # the training examples) without a better score, keeping the best (0: never)
    early_stopping: int = 0
    diverge_margin: float = 0.02  # final score not above chance by more: diverged (0: never)
    best_score: float = 0.0  # best_B for normalization; 0: looked up in MLflow
    probe_tasks: str = ""  # comma-separated tasks to extract activations on; empty: task
    probe_tokens: int = 5000  # N tokens per probe set
    probe_seed: int = 0
    # word tables too, for comparisons across tokenizers (data/word_probes.py): a word's
    # vector is its first sub-token's or its sub-tokens' mean ("first" | "mean"; "": none)
    word_probes: str = ""
    save_checkpoint: bool = True
    # own tasks' files (comma-separated), read before the task names are looked up; a
    # task file given as task, source_task or probe task is put here and named by name
    task_files: str = ""

    def __post_init__(self) -> None:
        self._name_tasks()
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode in TWO_TASK_MODES and self.source_task in ("base", self.task):
            raise InputError(
                f"mode={self.mode} needs source_task (A) to be a task other than "
                f"task={self.task}, not {self.source_task!r}"
            )
        checks = {
            "frozen_layers": self.frozen_layers >= 0,
            "lr": self.lr > 0,
            "head_lr": self.head_lr >= 0,
            "batch_size": self.batch_size > 0,
            "max_steps": self.max_steps > 0,
            "max_length": self.max_length >= 8,
            "warmup_ratio": 0 <= self.warmup_ratio <= 1,
            "probe_tokens": self.probe_tokens > 0,
            "max_train_examples": self.max_train_examples >= 0,
            "max_eval_examples": self.max_eval_examples >= 0,
            "eval_every": self.eval_every >= 0,
            "early_stopping": self.early_stopping >= 0,
            "diverge_margin": self.diverge_margin >= 0,
        }
        checks["sampling"] = self.sampling in ("uniform", "proportional")
        checks["pooling"] = self.pooling in POOLINGS
        checks["schedule"] = self.schedule in SCHEDULES
        checks["head_dropout"] = 0 <= self.head_dropout < 1
        checks["word_probes"] = self.word_probes in ("", "first", "mean")
        checks["source_steps"] = self.source_steps >= 0
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r} is out of range")
        if self.early_stopping and (self.mode != "single" or not self.eval_every):
            raise InputError(
                f"early_stopping={self.early_stopping} needs mode=single and eval_every > 0 "
                f"(the updates between its scores), not mode={self.mode}, "
                f"eval_every={self.eval_every}"
            )
        if not all(0 <= f <= 1 for f in self.checkpoint_fractions):
            raise InputError(f"checkpoints={self.checkpoints!r}: fractions must lie in [0, 1]")

    def _name_tasks(self) -> None:
        """Read the own task files, then name every task by its name: a task file given
        where a task is (`--task my/task.yaml`) becomes its name, its path joins
        task_files. An unknown task is one error."""
        try:
            files = [
                tasks.register(f.strip()).source for f in self.task_files.split(",") if f.strip()
            ]
            named = {}
            for field_name in ("task", "source_task", "probe_tasks"):
                refs = [r.strip() for r in getattr(self, field_name).split(",") if r.strip()]
                pretrained = "base" if field_name == "source_task" else None
                specs = {r: tasks.get_task(r) for r in refs if r != pretrained}
                files += [s.source for s in specs.values() if s.own]
                if any(tasks.is_task_file(r) for r in refs):  # else as written (in the key)
                    named[field_name] = ",".join(specs[r].name if r in specs else r for r in refs)
        except (ValueError, FileNotFoundError) as error:
            raise InputError(str(error).splitlines()[0]) from None
        for field_name, value in {**named, "task_files": ",".join(dict.fromkeys(files))}.items():
            object.__setattr__(self, field_name, value)

    def own_tasks(self) -> dict[str, str]:
        """name -> content digest of every own task the run reads (trains or probes)."""
        used = {self.task, self.source_task, *self.probe_task_list} - {"base"}
        specs = [tasks.get_task(name) for name in sorted(used)]
        return {spec.name: spec.digest for spec in specs if spec.own}

    @property
    def checkpoint_fractions(self) -> list[float]:
        try:
            return [float(f) for f in self.checkpoints.split(",") if f.strip()]
        except ValueError:
            raise ValueError(
                f"checkpoints={self.checkpoints!r} is not a list of fractions"
            ) from None

    @property
    def probe_task_list(self) -> list[str]:
        """The probe tasks: as given, else the run's task (and A's in two-task modes)."""
        tasks = [t.strip() for t in self.probe_tasks.split(",") if t.strip()]
        if self.mode in TWO_TASK_MODES:
            tasks = [t for t in (self.source_task, self.task) if t not in tasks] + tasks
        return tasks or [self.task]

    def to_params(self) -> dict[str, str]:
        """Flat string params, as MLflow stores them."""
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    @property
    def repeats_when_longer(self) -> bool:
        """Whether the same config with a larger max_steps repeats this run update for
        update, up to where this one stopped: early stopping, at a constant rate without
        warm-up (warm-up and decay are fractions of max_steps). A run that stopped before
        its cap is then its own longer run: a convergence check need not train it again."""
        return repeats_when_longer(self.early_stopping, self.schedule, self.warmup_ratio)

    @property
    def registers_source(self) -> bool:
        """Full fine-tuning from the pretrained model, checkpoint kept: the runs transfer
        starts from, registered as versions of `bertrep-<task>`."""
        return (
            self.mode == "single"
            and self.source_task == "base"
            and self.frozen_layers == 0
            and self.save_checkpoint
        )

    def source_fields(self) -> dict[str, Any]:
        """The fields that make a config this run's source: full fine-tuning on its
        source task (A) from the pretrained `base_model`, with its seed. Any config with
        these fields `registers_source`."""
        return {
            "mode": "single",
            "task": self.source_task,
            "seed": self.seed,
            "source_task": "base",
            "frozen_layers": 0,
            "base_model": self.base_model,
            "save_checkpoint": True,
            # the encoder and heads it trains are this run's (sequential keeps A's head)
            "pooling": self.pooling,
            "head_dropout": self.head_dropout,
            "untie_blocks": self.untie_blocks,
        }

    def data_reads(self) -> list[tuple[str, str, str]]:
        """(task, split, data_files) of every split the run reads: train and eval of its
        task (and of A in two-task modes), the eval split of each probe task; data_files
        applies to the run's own task only."""
        trained = {"single": [self.task], "extract": []}.get(
            self.mode, [self.source_task, self.task]
        )
        spec = tasks.get_task
        splits = {(t, s) for t in trained for s in (spec(t).train_split, spec(t).eval_split)}
        splits |= {(t, spec(t).eval_split) for t in self.probe_task_list}
        return sorted((t, s, self.data_files if t == self.task else "") for t, s in splits)

    @property
    def display_name(self) -> str:
        """The run as the UI and the sweep progress name it: `stsb from sst2, k=3, seed 0`."""
        if self.mode == "extract":
            return f"{Path(self.base_model).name} read out on {', '.join(self.probe_task_list)}"
        how = {"single": "from", "sequential": "after", "shuffled": "mixed with"}[self.mode]
        return f"{self.task} {how} {self.source_task}, k={self.frozen_layers}, seed {self.seed}"

    def key(self) -> str:
        """Digest of the resolved config: the identity of a run for resume and skip.
        The data (data_dir, data_files) counts by the content of the files read, a local
        base_model folder by its model files' content: moving either keeps the key."""
        values = dataclasses.asdict(self)
        del values["data_dir"], values["data_files"], values["task_files"]
        for name, default in KEYED_OFF_DEFAULT.items():
            if values[name] == default:
                del values[name]
        own = self.own_tasks()
        if own:  # by content, wherever the files lie; absent for built-ins
            values["own_tasks"] = own
        values["data"] = identity.data_digest(self.data_reads(), self.data_dir)
        values["base_model"] = identity.model_identity(self.base_model)
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a sweep trial, MLflow params); an unknown key is an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown training parameter {unknown[0]!r}")
        return cls(**{k: _coerce(known[k].type, v) for k, v in values.items()})


@dataclass(frozen=True)
class Runtime:
    """How to run, not what: never part of a run's identity."""

    mixed_precision: str = "auto"  # auto (bf16 on GPU, none on CPU) | no | bf16 | fp16
    experiment_name: str = ""  # empty: $MLFLOW_EXPERIMENT_NAME or the active run's
    progress: bool = True
    # frozen-prefix outputs a run holds in memory (0: the prefix runs at every step), and
    # those kept on disk under the cache folder for every run to share (0: none)
    prefix_cache_gb: float = 4.0
    prefix_disk_gb: float = 8.0
    # all layers frozen from a registered model: reference its run's activation tables
    # (equal to what this run would extract) instead of extracting them again
    reuse_tables: bool = True


def repeats_when_longer(early_stopping: int, schedule: str, warmup_ratio: float) -> bool:
    """TrainConfig.repeats_when_longer from the three fields (MLflow params, read back)."""
    return early_stopping > 0 and schedule == "constant" and warmup_ratio == 0


def parse_bool(value: Any) -> bool:
    """true/false, 1/0, yes/no (any case) or a bool; anything else is an error, not False."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{value!r} is not a boolean")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _coerce(type_name: Any, value: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    if kind == "bool":
        return parse_bool(value)
    if kind == "int" and isinstance(value, str):
        number = float(value)  # MLflow may hand over "60.0" for an int parameter
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    return {"int": int, "float": float, "str": str}[kind](value)


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One `--field` flag per dataclass field, defaults from the dataclass."""
    for f in fields(cls):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        parser.add_argument(
            f"--{f.name}",
            type=(lambda v, k=kind: _coerce(k, v)),
            default=f.default,
            help=f"(default: {f.default!r})",
        )


def from_namespace(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

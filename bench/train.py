"""Benchmark of bertrep's training loop: against `transformers.Trainer` on the same model,
data, batch size, length and steps (dynamic padding on both), and a k-frozen run's time
relative to k = 0 for every k, on this machine's CPU threads.

    python bench/train.py              # MiniLM, SST-2 (../shared/data), batch 32, 40 updates
    python bench/train.py --quick      # a tiny random BERT, seconds

Every timing is the wall clock of the updates alone (batches fetched, forward,
backward, clipping, AdamW, schedule), after one warm-up update that is not counted;
model loading, tokenization and evaluation are outside. Ours: `loop.optimise` with the
frozen-prefix cache as the sweep runs it. Trainer: AdamW, linear warm-up and decay,
gradient clipping 1.0, `DataCollatorWithPadding`, no logging, no saving, both with its
default random batches and with train_sampling_strategy="group_by_length" (our loop
groups by length too). Trainer's optimiser is its default (fused AdamW on torch ≥ 2.8).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random BERT, few steps")
    p.add_argument("--model", default="minilm", help="base model (minilm, folder, hub id)")
    p.add_argument(
        "--task",
        default="sst2",
        choices=["sst2", "mnli", "rte"],
        help="a classification task (Trainer's side builds a classifier)",
    )
    p.add_argument(
        "--data_dir",
        default=os.environ.get("BERTREP_DATA_DIR", str(REPO.parent / "shared" / "data")),
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--examples", type=int, default=2000, help="training examples drawn")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args()


def tiny_bert(folder: Path) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bertrep.training.model import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# --------------------------------------------------------------------------- ours


def ours(cfg, k: int) -> tuple[float, int]:
    """(seconds, examples) of cfg.max_steps updates by bertrep's loop with k frozen."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from bertrep import tracking
    from bertrep.training.config import Runtime
    from bertrep.training.loop import Context, load_task_data, optimise
    from bertrep.training.model import load_model

    set_seed(cfg.seed)
    model, tokenizer, _ = load_model(cfg.base_model, [cfg.task])
    model.freeze(k)
    data = load_task_data(cfg, cfg.task, tokenizer)
    accelerator = Accelerator(mixed_precision="no")
    with tracking.mlflow.start_run() as run:
        metrics = tracking.MetricLogger(run.info.run_id)
        ctx = Context(cfg, accelerator, metrics, tokenizer.pad_token_id, run.info.run_id,
                      Path(tempfile.mkdtemp()), Runtime(progress=False))  # fmt: skip
        model = accelerator.prepare(model)
        times = []
        optimise(ctx, model, [data], cfg.max_steps, "train",
                 lambda step: times.append(time.perf_counter()))  # fmt: skip
        metrics.flush()
    seconds = times[-1] - times[1]  # from the end of update 1 (warm-up, prefix cache built)
    return seconds, (cfg.max_steps - 1) * cfg.batch_size


# --------------------------------------------------------------------------- Trainer


def trainer(cfg, group_by_length: bool) -> tuple[float, int]:
    """(seconds, examples) of the same updates by transformers.Trainer."""
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from bertrep.data.tasks import get_task
    from bertrep.training.loop import load_task_data
    from bertrep.training.model import load_model, resolve_model_path

    path = resolve_model_path(cfg.base_model)
    _, tokenizer, _ = load_model(cfg.base_model, [cfg.task])
    data = load_task_data(cfg, cfg.task, tokenizer).train  # the same examples, same tokens
    rows = [{"input_ids": data.input_ids[i].tolist(),
             "token_type_ids": data.token_type_ids[i].tolist(),
             "attention_mask": [1] * len(data.input_ids[i]),
             "labels": int(data.labels[i])} for i in range(len(data))]  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=get_task(cfg.task).num_labels
    )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    clock = Clock()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.max_steps, learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="linear", report_to="none", save_strategy="no",
        logging_strategy="no", eval_strategy="no", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=cfg.seed,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=rows,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[clock]).train()  # fmt: skip
    return clock.times[-1] - clock.times[0], (cfg.max_steps - 1) * cfg.batch_size


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from bertrep.training.config import TrainConfig
    from bertrep.training.model import TaskModel, load_model

    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'bench.db'}")
    os.environ.setdefault("BERTREP_CACHE_DIR", str(tmp / "cache"))
    if args.quick:
        args.model, args.steps, args.examples, args.batch_size = tiny_bert(tmp / "tiny"), 6, 64, 8
    cfg = TrainConfig(task=args.task, base_model=args.model, data_dir=args.data_dir,
                      max_steps=args.steps, batch_size=args.batch_size, lr=1e-4,
                      max_length=args.max_length, max_train_examples=args.examples)  # fmt: skip
    layers = TaskModel(load_model(cfg.base_model, [cfg.task])[0].encoder, []).num_layers
    started = time.perf_counter()
    print(f"# training loop benchmark: {args.model}, {args.task}, batch {args.batch_size}, "
          f"{args.steps} updates (the first not timed), max length {args.max_length}, "
          f"{args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          )  # fmt: skip
    rows = {"ours (k = 0)": ours(cfg, 0)}
    rows["Trainer, random batches"] = trainer(cfg, False)
    rows["Trainer, group_by_length"] = trainer(cfg, True)
    for k in range(1, layers + 1):
        rows[f"ours (k = {k})"] = ours(cfg, k)
    base = rows["ours (k = 0)"]
    rate = {name: n / s for name, (s, n) in rows.items()}
    print(f"\n{'run':28s} {'seconds':>8s} {'examples/s':>11s} {'÷ ours k=0':>11s}  target")
    for name, (seconds, _) in rows.items():
        target = ""
        if name.startswith("ours (k = ") and name != "ours (k = 0)":
            k = int(name.split("= ")[1].rstrip(")"))
            bound = (layers - k) / layers + 0.15
            target = (
                f"time ≤ {bound:.2f} of k = 0: {'met' if seconds / base[0] <= bound else 'NOT met'}"
            )
        print(f"{name:28s} {seconds:8.2f} {rate[name]:11.1f} {seconds / base[0]:11.2f}  {target}")
    best_trainer = max(rate["Trainer, random batches"], rate["Trainer, group_by_length"])
    print(
        f"\nours k=0 vs the faster Trainer: {rate['ours (k = 0)'] / best_trainer:.2f}× the "
        "examples/s (target ≥ 1)"
    )
    k5 = min(5, layers - 1)
    print(
        f"k = {k5} vs k = 0: {rate[f'ours (k = {k5})'] / rate['ours (k = 0)']:.2f}× the "
        "examples/s (target ≥ 2 for k = 5 of the 6-layer minilm)"
    )
    print(f"total bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

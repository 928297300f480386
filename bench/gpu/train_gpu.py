"""Training throughput on one GPU: `transformers.Trainer` against bertrep's loop on a
BERT-base-shaped model with random weights (sequence length 128, batch 32); one trial
against 2, 4 and 8 trials packed on the one GPU (separate processes, as Ray runs trials
with fractional GPUs); k = 6 and 11 frozen blocks with and without the frozen-prefix cache.

    python bench/gpu/train_gpu.py           # CUDA: BERT-base shape; a few minutes on an H100
    python bench/gpu/train_gpu.py --tiny    # CPU: a tiny BERT, packs of 2, seconds (tested)

Needs torch, transformers and accelerate only (no MLflow, Ray, datasets or data files):
bertrep is imported from src/, the model is built here with random weights, inputs are
random token ids of exactly --length tokens with random labels. On CUDA both sides train
under bf16 autocast with fused AdamW. Each rate counts the updates after --warmup untimed
ones, the device synchronised at both ends; a packed run's rate is all its processes'
examples over the time from a common start signal to the last one's end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from bertrep.data.encode import Encoded  # noqa: E402

CUDA = torch.cuda.is_available()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny BERT on the CPU, packs of 2")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="timed updates per measurement")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--examples", type=int, default=1024, help="training set (cycled)")
    p.add_argument("--packs", default="2,4,8")
    p.add_argument("--frozen", default="6,11")
    # one packed worker (internal): model folder, k, start-signal file, result file
    p.add_argument("--worker", nargs=4, metavar=("MODEL", "K", "GO", "OUT"))
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.examples, args.length = 6, 2, 64, 32
        args.packs, args.frozen = "2", "1,2"
    return args


def build_model(folder: Path, tiny: bool) -> str:
    """A BERT with random weights (BERT-base's shape, or tiny) and a WordPiece tokenizer
    over a made-up vocabulary of the same size, saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64) if tiny else {}  # fmt: skip
    config = BertConfig(**shape)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(config.vocab_size - len(specials))]
    (folder / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return str(folder)


def synthetic(n: int, length: int, vocab: int, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[2], rng.integers(5, vocab, length - 2), [3]]) for _ in range(n)]
    return Encoded(ids, [np.zeros(length, np.int64) for _ in ids], rng.integers(0, 2, n),
                   [np.zeros(length, bool) for _ in ids],
                   key=f"synthetic-{n}-{length}-{seed}")  # fmt: skip


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class Discard:
    """The loop's metric sink, with nowhere to send metrics (no MLflow here)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


def ours(args, folder: str, k: int, cache_gb: float, go: Path | None = None) -> dict:
    """bertrep's loop (`loop.optimise`) with k frozen blocks: examples/s over the timed
    updates, and the first update's seconds (it builds the prefix cache when there is one)."""
    from accelerate import Accelerator

    from bertrep.data.tasks import get_task
    from bertrep.training.config import Runtime, TrainConfig
    from bertrep.training.loop import Context, TaskData, optimise
    from bertrep.training.model import load_model

    cfg = TrainConfig(task="sst2", base_model=folder, batch_size=args.batch_size, lr=1e-4,
                      max_length=args.length, frozen_layers=k,
                      max_steps=args.warmup + args.steps)  # fmt: skip
    model, tokenizer, _ = load_model(folder, ["sst2"])
    model.freeze(k)
    data = synthetic(args.examples, args.length, len(tokenizer))
    accelerator = Accelerator(mixed_precision="bf16" if CUDA else "no")
    runtime = Runtime(progress=False, prefix_cache_gb=cache_gb, prefix_disk_gb=0.0)
    ctx = Context(cfg, accelerator, Discard(), tokenizer.pad_token_id, "bench",
                  Path(tempfile.mkdtemp()), runtime)  # fmt: skip
    task = TaskData(get_task("sst2"), data, data, 0.5, "", "")
    model = accelerator.prepare(model)
    times: dict[int, float] = {}

    def clock(step: int) -> None:
        if step == args.warmup and go is not None:  # packed: wait for the others
            sync()
            (go.parent / f"ready-{os.getpid()}").touch()
            while not go.exists():
                time.sleep(0.01)
        if step in (0, 1, args.warmup, cfg.max_steps):
            sync()
            times[step] = time.perf_counter()

    optimise(ctx, model, [task], cfg.max_steps, "train", clock)
    seconds = times[cfg.max_steps] - times[args.warmup]
    examples = args.steps * args.batch_size
    return {"examples_per_s": examples / seconds, "first_s": times[1] - times[0],
            "start": times[args.warmup], "end": times[cfg.max_steps],
            "examples": examples}  # fmt: skip


def trainer(args, folder: str) -> dict:
    """The same updates by transformers.Trainer (bf16 on CUDA, fused AdamW)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = synthetic(args.examples, args.length, len(tokenizer))
    rows = [{"input_ids": ids.tolist(), "token_type_ids": types.tolist(),
             "attention_mask": [1] * len(ids), "labels": int(label)}
            for ids, types, label in zip(data.input_ids, data.token_type_ids, data.labels,
                                         strict=True)]  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)

    class Clock(TrainerCallback):
        times: dict[int, float] = {}

        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync()
                self.times[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=1e-4, warmup_steps=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, bf16=CUDA, use_cpu=not CUDA,
        optim="adamw_torch_fused", report_to="none", save_strategy="no",
        logging_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    clock = Clock()
    collator = DataCollatorWithPadding(tokenizer)
    Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator,
            callbacks=[clock]).train()  # fmt: skip
    seconds = clock.times[args.warmup + args.steps] - clock.times[args.warmup]
    return {"examples_per_s": args.steps * args.batch_size / seconds}


def packed(args, folder: str, n: int, tmp: Path) -> dict:
    """n processes training at once on the one device (k = 0): their summed throughput."""
    folder_run = tmp / f"pack-{n}"
    folder_run.mkdir()
    go = folder_run / "go"
    outs = [folder_run / f"out-{i}.json" for i in range(n)]
    common = [f"--{k}={getattr(args, k)}" for k in ("length", "batch_size", "steps",
                                                       "warmup", "examples")]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, __file__, *common, "--worker", folder, "0",
                               str(go), str(out)]) for out in outs]  # fmt: skip
    while len(list(folder_run.glob("ready-*"))) < n:
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"a packed worker failed ({n} packed)")
        time.sleep(0.05)
    go.touch()
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"a packed worker failed ({n} packed)")
    results = [json.loads(out.read_text()) for out in outs]
    # every worker's clock is perf_counter of the same machine: one timeline
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"examples_per_s": sum(r["examples"] for r in results) / span,
            "each": [round(r["examples_per_s"], 1) for r in results]}  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        folder, k, go, out = args.worker
        Path(out).write_text(json.dumps(ours(args, folder, int(k), 4.0, go=Path(go))))
        return
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    folder = build_model(tmp / "model", args.tiny)
    device = torch.cuda.get_device_name(0) if CUDA else f"CPU ({os.cpu_count()} cores)"
    print(f"# GPU training benchmark on {device}: {'tiny BERT' if args.tiny else 'BERT-base shape'}"
          f", random weights, length {args.length}, batch {args.batch_size}, {args.steps} timed "
          f"updates after {args.warmup}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    rows = [("Trainer", trainer(args, folder)), ("ours, k = 0", ours(args, folder, 0, 0.0))]
    for n in [int(x) for x in args.packs.split(",")]:
        rows.append((f"ours, {n} trials packed", packed(args, folder, n, tmp)))
    for k in [int(x) for x in args.frozen.split(",")]:
        rows.append((f"ours, k = {k}, no cache", ours(args, folder, k, 0.0)))
        rows.append((f"ours, k = {k}, cache", ours(args, folder, k, 4.0)))
    print(f"\n{'run':28s} {'examples/s':>11s} {'÷ Trainer':>10s}  note")
    for name, r in rows:
        note = f"each: {r['each']}" if "each" in r else ""
        if "first_s" in r and "cache" in name and "no cache" not in name:
            note = f"first update {r['first_s']:.2f} s (builds the cache)"
        ratio = r["examples_per_s"] / rows[0][1]["examples_per_s"]
        print(f"{name:28s} {r['examples_per_s']:11.1f} {ratio:10.2f}  {note}")
    print(f"total bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Fine-tune an encoder on one task with Accelerate; log everything to MLflow.

    python -m bertrep.train --task sst2 --base_model minilm --max_steps 60 \
        --data_dir ../shared/data
    mlflow run . -e train --env-manager local -P task=sst2 -P max_steps=60

Every run logs its params and tags, per-step loss and learning rate, eval scores
(raw, chance, normalized), throughput, the checkpoint, the probe sets and the
Parquet activation tables of every hidden state on each probe set.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bertrep import activations, tracking
from bertrep.config import Runtime, TrainConfig, add_arguments, from_namespace
from bertrep.encode import (
    IGNORE,
    Encoded,
    LengthGroupedBatches,
    collate,
    encode_cached,
    eval_batches,
    tokenizer_digest,
)
from bertrep.model import TaskModel, load_model, loss_fn, predictions, save_checkpoint
from bertrep.probes import ProbeSet, build_probe_set, excluded_ids
from bertrep.tasks import TaskSpec, chance_score, get_task, load_split, score

DATA_SEED = 0  # the training subsample is the same for every run; seeds vary init and order


@dataclass
class TaskData:
    spec: TaskSpec
    train: Encoded | None
    eval: Encoded
    chance: float
    train_source: str
    eval_source: str


@dataclass
class Outcome:
    scores: dict[str, float]
    diverged: str  # empty, or why the run counts as failed
    step: int


def load_task_data(cfg: TrainConfig, task: str, tokenizer, *, train: bool) -> TaskData:
    """Tokenized train (optional) and eval splits of `task`, subsampled as `cfg` says."""
    spec = get_task(task)
    where = {"data_dir": cfg.data_dir, "data_files": cfg.data_files if task == cfg.task else ""}
    eval_examples, eval_source = load_split(spec, spec.eval_split, **where)
    if cfg.max_eval_examples:
        eval_examples = eval_examples[: cfg.max_eval_examples]
    eval_data = encode_cached(spec, eval_examples, eval_source, tokenizer, cfg.max_length)
    train_data, train_source = None, ""
    if train:
        examples, train_source = load_split(spec, "train", **where)
        train_data = encode_cached(spec, examples, train_source, tokenizer, cfg.max_length)
        if cfg.max_train_examples and cfg.max_train_examples < len(train_data):
            rng = np.random.default_rng(DATA_SEED)
            keep = np.sort(rng.choice(len(train_data), cfg.max_train_examples, replace=False))
            train_data = train_data.subset(keep)
    chance = chance_score(spec, eval_examples)
    return TaskData(spec, train_data, eval_data, chance, train_source, eval_source)


def make_loader(data: Encoded, batch_sampler, pad_id: int) -> DataLoader:
    return DataLoader(
        range(len(data)),
        batch_sampler=batch_sampler,
        collate_fn=lambda index: collate(data, index, pad_id),
    )


@torch.no_grad()
def evaluate(model: TaskModel, task: TaskData, accelerator, pad_id: int, batch_size: int):
    """The task's metrics on its eval split."""
    model.eval()
    loader = accelerator.prepare(
        make_loader(task.eval, eval_batches(task.eval, batch_size), pad_id)
    )
    preds, golds = [], []
    for batch in loader:
        labels = batch.pop("labels")
        pred = predictions(task.spec, model(task.spec.name, **batch))
        if task.spec.kind == "tagging":
            keep = labels != IGNORE
            pred, labels = pred[keep], labels[keep]
            pred = accelerator.pad_across_processes(pred, pad_index=IGNORE)
            labels = accelerator.pad_across_processes(labels, pad_index=IGNORE)
        pred, labels = accelerator.gather_for_metrics((pred, labels))
        preds.append(pred.cpu())
        golds.append(labels.cpu())
    model.train()
    pred, gold = torch.cat(preds).numpy(), torch.cat(golds).numpy()
    if task.spec.kind == "tagging":
        pred, gold = pred[gold != IGNORE], gold[gold != IGNORE]
    return score(task.spec, pred, gold)


def normalized(value: float, chance: float, best: float) -> float:
    """(s - chance) / (best - chance); NaN where best equals chance (nothing to scale by)."""
    return (value - chance) / (best - chance) if best != chance else math.nan


def fine_tune(
    cfg: TrainConfig,
    model: TaskModel,
    task: TaskData,
    accelerator: Accelerator,
    metrics: tracking.MetricLogger,
    pad_id: int,
    best: float,
    progress: bool = True,
) -> Outcome:
    """The training loop: AdamW (bias-corrected), linear warm-up then decay, max_steps."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps
    )
    sampler = LengthGroupedBatches(task.train.lengths(), cfg.batch_size, cfg.seed)
    loader = make_loader(task.train, sampler, pad_id)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, seen, train_time, diverged, scores = 0, 0, 0.0, "", {}
    bar = tqdm(total=cfg.max_steps, desc=f"{cfg.task} k={cfg.frozen_layers}", disable=not progress)
    while step < cfg.max_steps and not diverged:
        for batch in loader:
            start = time.perf_counter()
            labels = batch.pop("labels")
            loss = loss_fn(task.spec, model(cfg.task, **batch), labels)
            if not torch.isfinite(loss):
                # Keep the last finite weights: the run is kept and analysable.
                diverged = f"non-finite loss at step {step + 1}"
                metrics.log({tracking.LOSS: loss.item()}, step + 1)
                break
            accelerator.backward(loss)
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            train_time += time.perf_counter() - start
            step += 1
            seen += len(labels)
            metrics.log({tracking.LOSS: loss.item(), tracking.LR: scheduler.get_last_lr()[0]}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                scores = log_eval(model, task, accelerator, metrics, pad_id, cfg, best, step)
            if step >= cfg.max_steps:
                break
    bar.close()
    metrics.log({tracking.THROUGHPUT: seen / max(train_time, 1e-9)}, step)
    scores = log_eval(model, task, accelerator, metrics, pad_id, cfg, best, step)
    final = scores[task.spec.metric]
    if not diverged and (
        not math.isfinite(final) or abs(final - task.chance) <= cfg.diverge_margin
    ):
        diverged = f"final {task.spec.metric} {final:.4f} within {cfg.diverge_margin} of chance"
    return Outcome(scores, diverged, step)


def log_eval(model, task, accelerator, metrics, pad_id, cfg, best, step) -> dict[str, float]:
    scores = evaluate(model, task, accelerator, pad_id, batch_size=max(64, cfg.batch_size))
    value = scores[task.spec.metric]
    logged = {tracking.eval_metric(k): v for k, v in scores.items()}
    logged[tracking.CHANCE] = task.chance
    logged[tracking.NORM_SCORE] = normalized(value, task.chance, best)
    metrics.log(logged, step)
    return scores


def registers_source(cfg: TrainConfig) -> bool:
    """Full fine-tuning from the pretrained model: the runs transfer starts from."""
    return cfg.source_task == "base" and cfg.frozen_layers == 0 and cfg.save_checkpoint


def source_tags(cfg: TrainConfig) -> dict[str, str]:
    """What identifies a registered source model (a version of `bertrep-<task>`)."""
    return {
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SEED: str(cfg.seed),
        tracking.CONFIG_KEY: cfg.key(),
    }


def resolve_best(cfg: TrainConfig, spec: TaskSpec) -> tuple[float, str]:
    """best_B for the normalized score: given, else looked up, else the ideal score 1."""
    if cfg.best_score:
        return cfg.best_score, "given"
    best, runs = tracking.reference_best(cfg.task, cfg.base_model, spec.metric)
    if runs:
        return best, f"mean of {runs} full fine-tuning runs"
    return 1.0, "ideal score (no full fine-tuning runs from the base model yet)"


def probe_sets(cfg: TrainConfig, tokenizer) -> list[tuple[ProbeSet, Encoded]]:
    """The probe set (and its tokenized split) of every probe task, for this tokenizer."""
    digest = tokenizer_digest(tokenizer)
    out = []
    for name in cfg.probe_task_list:
        spec = get_task(name)
        # Probe sets never depend on max_eval_examples: every model compared must agree.
        examples, source = load_split(
            spec,
            spec.eval_split,
            data_dir=cfg.data_dir,
            data_files=cfg.data_files if name == cfg.task else "",
        )
        data = encode_cached(spec, examples, source, tokenizer, cfg.max_length)
        probe = build_probe_set(
            data,
            task=name,
            split=spec.eval_split,
            source=source,
            tokenizer_digest=digest,
            excluded=excluded_ids(tokenizer),
            max_length=cfg.max_length,
            n_tokens=cfg.probe_tokens,
            seed=cfg.probe_seed,
        )
        out.append((probe, data))
    return out


def log_activations(model, probes, pad_id, run_id: str, step: int, folder: Path) -> None:
    """Write and log the probe tables and every hidden state on each probe set."""
    for probe, data in probes:
        task = probe.meta["task"]
        table_path = folder / tracking.probe_artifact(task)
        table_path.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        pq.write_table(probe.to_table(), table_path)
        tracking.log_artifact(table_path, str(Path(tracking.probe_artifact(task)).parent))
        states = activations.extract(model, data, probe, pad_id=pad_id)
        path = folder / tracking.activations_dir(task) / tracking.activations_file(step)
        activations.write_table(path, states, probe, {"run_id": run_id, "step": step})
        tracking.log_artifact(path, tracking.activations_dir(task))


def run(cfg: TrainConfig, runtime: Runtime | None = None, tags: dict | None = None) -> str:
    """One training run, start to end, in one MLflow run. Returns the run id."""
    runtime = runtime or Runtime()
    set_seed(cfg.seed)
    precision = runtime.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    model, tokenizer, source_meta = load_model(cfg.base_model, [cfg.task])
    model.freeze(cfg.frozen_layers)
    task = load_task_data(cfg, cfg.task, tokenizer, train=True)
    pad_id = tokenizer.pad_token_id
    run_tags = {
        tracking.KIND: "train",
        tracking.TASK: cfg.task,
        tracking.BASE_MODEL: cfg.base_model,
        tracking.SOURCE_TASK: cfg.source_task,
        tracking.FROZEN_LAYERS: cfg.frozen_layers,
        tracking.SEED: cfg.seed,
        tracking.CONFIG_KEY: cfg.key(),
        tracking.NUM_LAYERS: model.num_layers,
        tracking.TRAIN_FILE: task.train_source,
        tracking.EVAL_FILE: task.eval_source,
        **(tags or {}),
    }
    with tracking.start_run(
        runtime.experiment_name, tags={k: str(v) for k, v in run_tags.items()}
    ) as active:
        run_id = active.info.run_id
        tracking.log_config(cfg.to_params())
        probes = probe_sets(cfg, tokenizer)  # before training: a bad probe task fails fast
        best, best_source = resolve_best(cfg, task.spec)
        tracking.set_tags({"best_source": best_source})
        metrics = tracking.MetricLogger(run_id)
        metrics.log({tracking.BEST_SCORE: best}, 0)
        outcome = fine_tune(cfg, model, task, accelerator, metrics, pad_id, best, runtime.progress)
        final = outcome.scores[task.spec.metric]
        metrics.log(
            {
                tracking.FINAL_SCORE: final,
                tracking.FINAL_NORM_SCORE: normalized(final, task.chance, best),
            },
            outcome.step,
        )
        metrics.flush()
        tracking.set_tags({tracking.DIVERGED: str(bool(outcome.diverged)).lower()})
        if outcome.diverged:
            tracking.set_tags({tracking.DIVERGED_REASON: outcome.diverged})
        model = accelerator.unwrap_model(model)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            log_activations(model, probes, pad_id, run_id, outcome.step, tmp)
            if cfg.save_checkpoint:
                meta = {
                    "base_model": cfg.base_model,
                    "task": cfg.task,
                    "frozen_layers": cfg.frozen_layers,
                    "source": source_meta,
                }
                save_checkpoint(model, tokenizer, tmp / tracking.CHECKPOINT, meta)
                tracking.log_artifact(tmp / tracking.CHECKPOINT, tracking.CHECKPOINT)
                if registers_source(cfg):
                    uri = tracking.register_checkpoint(run_id, cfg.task, source_tags(cfg))
                    tracking.set_tags({tracking.REGISTERED_AS: uri})
    return run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, TrainConfig)
    add_arguments(parser, Runtime)
    args = parser.parse_args(argv)
    run_id = run(from_namespace(args, TrainConfig), from_namespace(args, Runtime))
    print(f"run {run_id} finished")


if __name__ == "__main__":
    main()

"""A column of the quick AuFC grid two ways, side by side in one run: bertrep's sweep
(`python -m bertrep.sweep`: Ray Tune, two trials at a time of one CPU, its own MLflow
server, every run logged) against the same trials one after another with
`transformers.Trainer` (all the machine's threads, nothing logged): what a user would
otherwise write.

    python bench/grid.py            # STS-B from SST-2, k = 0, 3, 6, seeds 0 and 1 (quick settings)
    python bench/grid.py --quick    # a tiny random BERT, a few updates (tested)

The sources (SST-2 from the pretrained model, one per seed) are trained first by a
sweep (untimed) and shared: both sides start each trial from the same registered model.
Each baseline trial: load that model with a fresh STS-B head, freeze the embeddings and
blocks 1..k (`requires_grad_(False)`; Trainer keeps dropout on in them), train with
Trainer (same examples, batch size, updates, learning rate, warm-up, clipping, length,
length-grouped batches, dynamic padding), score the eval examples (Pearson), and read
the model out on STS-B's probe set (a plain forward with output_hidden_states over the
probed sentences, shortest first, 64 at a time). Ours is timed end to end as a user
runs it (start-up of Ray and the server included); its trials' share outside the
updates comes from their MLflow records (run wall against updates / examples per s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train import tiny_bert  # noqa: E402  (bench/train.py)

QUICK = yaml.safe_load((REPO / "sweeps" / "quick" / "aufc.yaml").read_text())["fixed"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random BERT, few updates")
    p.add_argument(
        "--data_dir",
        default=os.environ.get("BERTREP_DATA_DIR", str(REPO.parent / "shared" / "data")),
    )
    p.add_argument("--frozen", default="0,3,6", help="k of the trials")
    p.add_argument("--seeds", default="0,1")
    return p.parse_args()


def sweep(spec: dict, folder: Path, env: dict) -> float:
    """Wall seconds of `python -m bertrep.sweep` on `spec` (printed output kept in a log)."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    with open(folder / f"{spec['name']}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "bertrep.sweep", "--spec", str(path)],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    return time.perf_counter() - started


def trainer_trial(cfg, source_uri: str, k: int) -> dict[str, float]:
    """One trial with Trainer: (train, eval, read-out, total) seconds and the score."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertrep.data.encode import collate
    from bertrep.data.metrics import score
    from bertrep.tracking import registry
    from bertrep.training.loop import load_task_data
    from bertrep.training.model import load_model
    from bertrep.training.readout import probe_sets

    started = time.perf_counter()
    folder = Path(registry.download_model(source_uri)) / "model"
    _, tokenizer, _ = load_model(cfg.base_model, [cfg.task])
    data = load_task_data(cfg, cfg.task, tokenizer)

    def rows(encoded):
        return [{"input_ids": encoded.input_ids[i].tolist(),
                 "token_type_ids": encoded.token_type_ids[i].tolist(),
                 "attention_mask": [1] * len(encoded.input_ids[i]),
                 "labels": float(encoded.labels[i])} for i in range(len(encoded))]  # fmt: skip

    torch.manual_seed(cfg.seed)
    # a fresh one-output regression head in place of the source's two-class one
    config = AutoConfig.from_pretrained(folder, num_labels=1, problem_type="regression",
                                        id2label={0: "score"}, label2id={"score": 0})  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, config=config, ignore_mismatched_sizes=True
    )
    assert model.config.num_labels == 1
    if k:
        for module in [model.bert.embeddings, *model.bert.encoder.layer[:k]]:
            module.requires_grad_(False)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64, max_steps=cfg.max_steps, learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear", report_to="none",
        save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, seed=cfg.seed,
        train_sampling_strategy="group_by_length",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows(data.train),
                      data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    out = trainer.predict(rows(data.eval))
    assert out.predictions.shape == (len(data.eval), 1)
    # against out.label_ids: the labels in the order Trainer predicted them
    pearson = score(data.spec, out.predictions.reshape(-1), out.label_ids.reshape(-1))
    t2 = time.perf_counter()
    (probe, encoded), = probe_sets(cfg, tokenizer)  # fmt: skip
    model.eval()
    sentences = np.unique(probe.sentence)
    sentences = sentences[np.argsort(encoded.lengths()[sentences], kind="stable")]
    states = {}
    with torch.no_grad():
        for first in range(0, len(sentences), 64):
            chosen = sentences[first : first + 64]
            batch = collate(encoded, chosen, tokenizer.pad_token_id)
            batch.pop("labels")
            hidden = model.bert(**batch, output_hidden_states=True).hidden_states
            for slot, s in enumerate(chosen):
                states[s] = [h[slot] for h in hidden]
    table = np.stack([np.stack([states[s][h][p].numpy() for s, p in
                                zip(probe.sentence, probe.position, strict=True)])
                      for h in range(len(states[sentences[0]]))])  # fmt: skip
    t3 = time.perf_counter()
    assert table.shape[1] == len(probe)
    return {"train": t1 - t0, "eval": t2 - t1, "read-out": t3 - t2, "total": t3 - started,
            "score": pearson[data.spec.metric]}  # fmt: skip


def trial_shares(env: dict) -> list[tuple[str, float, float]]:
    """(name, run wall s, updates s) of the transfer trials in the store."""
    import mlflow

    from bertrep import tracking

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    out = []
    for r in mlflow.search_runs(search_all_experiments=True, output_format="list"):
        p, m = r.data.params, r.data.metrics
        if p.get("source_task") == "sst2" and r.info.status == "FINISHED":
            wall = (r.info.end_time - r.info.start_time) / 1000
            updates = int(p["max_steps"]) * int(p["batch_size"]) / m[tracking.THROUGHPUT]
            out.append((r.data.tags[tracking.RUN_NAME], wall, updates))
    return sorted(out)


def main() -> None:
    args = parse_args()
    from bertrep.training.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
            "BERTREP_CACHE_DIR": str(tmp / "cache"), "BERTREP_DATA_DIR": args.data_dir,
            "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    os.environ.update(env)
    fixed = dict(QUICK)
    if args.quick:
        tiny = {"base_model": tiny_bert(tmp / "tiny"), "max_steps": 4, "probe_tokens": 100}
        fixed |= tiny | {"max_train_examples": 64, "max_eval_examples": 32}
        args.frozen = "0,2,4" if args.frozen == "0,3,6" else args.frozen  # its 4 blocks
    frozen = [int(k) for k in args.frozen.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sources = {"kind": "single", "name": "bench-sources", "resources": {"cpus_per_trial": 1},
               "fixed": fixed | {"probe_tasks": "mnli,stsb,sst2,pos", "save_checkpoint": True},
               "grid": [{"task": "sst2", "seed": seeds}]}  # fmt: skip
    grid = {"kind": "aufc", "name": "bench-grid", "resources": {"cpus_per_trial": 1},
            "fixed": fixed, "sources": {"probe_tasks": "mnli,stsb,sst2,pos"},
            "grid": [{"task": "stsb", "source_task": "sst2", "frozen_layers": frozen,
                      "seed": seeds}]}  # fmt: skip
    if args.quick:
        sources["fixed"]["probe_tasks"] = grid["sources"]["probe_tasks"] = "stsb,sst2"
    # the AuFC sweep's own sources: skipped by it, so the timed sweep trains only trials
    print(f"# the quick AuFC grid's STS-B-from-SST-2 trials (k = {args.frozen}, seeds "
          f"{args.seeds}), {fixed['max_steps']} updates of {fixed['batch_size']}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    print(f"sources (untimed): {sweep(sources, tmp, env):.0f}s")
    ours = sweep(grid, tmp, env)
    if "sources: 0 to run" not in (tmp / "bench-grid.log").read_text():
        raise SystemExit("the timed sweep trained its sources again: the timing would count them")

    from bertrep import tracking
    from bertrep.tracking import registry, server

    torch.set_num_threads(os.cpu_count() or 1)
    base = {k: v for k, v in fixed.items() if k != "save_checkpoint"}
    rows = []
    # the sources' files went through the sweep's server: read them back through one
    with server.through_server(tmp / "server"):
        for seed in seeds:
            uri = registry.find_registered("sst2", {tracking.SEED: str(seed)})
            for k in frozen:
                cfg = TrainConfig(**base, task="stsb", source_task="sst2", frozen_layers=k,
                                  seed=seed, data_dir=args.data_dir,
                                  probe_tasks="stsb")  # fmt: skip
                rows.append((f"stsb from sst2, k={k}, seed {seed}", trainer_trial(cfg, uri, k)))
    print(f"\n{'Trainer, one after another':32s} {'train':>7s} {'eval':>6s} {'read-out':>9s} "
          f"{'total':>7s}  {'Pearson':>7s}")  # fmt: skip
    for name, t in rows:
        print(f"{name:32s} {t['train']:6.1f}s {t['eval']:5.1f}s {t['read-out']:8.1f}s "
              f"{t['total']:6.1f}s  {t['score']:7.3f}")  # fmt: skip
    baseline = sum(t["total"] for _, t in rows)
    print(f"\n{'ours: trial runs in the sweep':32s} {'wall':>7s} {'updates':>8s} {'outside':>8s}")
    shares = trial_shares(env)
    for name, wall, updates in shares:
        print(f"{name:32s} {wall:6.1f}s {updates:7.1f}s {1 - updates / wall:7.0%}")
    walls = sum(w for _, w, _ in shares)
    outside = 1 - sum(u for _, _, u in shares) / walls
    print(
        f"\n{len(rows)} trials: Trainer one after another {baseline:.0f}s; our sweep "
        f"{ours:.0f}s end to end ({baseline / ours:.2f}× as fast; target ≥ 2)"
    )
    print(f"our trials outside the updates: {outside:.0%} of their wall (target ≤ 25%)")


if __name__ == "__main__":
    main()

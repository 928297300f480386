"""Reading a model out on its probe sets: build the sets, extract every hidden state at
the probe tokens, write and log the activation tables.

    probes = probe_sets(cfg, tokenizer)                  # [(ProbeSet, Encoded)], one per task
    states = extract(model, data, probe, pad_id=0)       # (L + 1, N, width) float32
    log_activations(model, probes, folder, run_id, step, pad_id=0)

Hidden state h = 0..L: h = 0 is the embedding output, h = l the output of block l
(h = L after the final norm where a family has one; each table's metadata says which).
Tables are written by `activations` (pyarrow and numpy only); this module runs the
model, so it needs torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bertrep import encoders, tracking
from bertrep.data import activations
from bertrep.data.encode import Encoded, collate, encode_cached, eval_batches, tokenizer_digest
from bertrep.data.probe_sets import ProbeSet, build_probe_set
from bertrep.data.tasks import Example, get_task, load_split
from bertrep.data.word_probes import build_word_probe_set, word_spans
from bertrep.training.config import TrainConfig

Probes = list[tuple[ProbeSet, Encoded]]


def probe_sets(cfg: TrainConfig, tokenizer) -> Probes:
    """The probe set (and its tokenized split) of every probe task, for this tokenizer."""
    digest = tokenizer_digest(tokenizer)
    out = []
    for name in cfg.probe_task_list:
        spec = get_task(name)
        # Probe sets never depend on max_eval_examples: every model compared must agree.
        files = cfg.data_files if name == cfg.task else ""
        examples, file = load_split(spec, spec.eval_split, data_dir=cfg.data_dir, data_files=files)
        data = encode_cached(spec, examples, file, tokenizer, cfg.max_length)
        probe = build_probe_set(
            data,
            task=name,
            split=spec.eval_split,
            file=file,
            tokenizer_digest=digest,
            max_length=cfg.max_length,
            n_tokens=cfg.probe_tokens,
            seed=cfg.probe_seed,
            task_digest=spec.digest,
        )
        out.append((probe, data))
    return out


@torch.no_grad()
def extract(
    model, data: Encoded, probe: ProbeSet, *, pad_id: int, batch_size: int = 64, device=None
) -> np.ndarray:
    """Hidden states at the probe tokens: (L + 1, N, width) float32, rows in probe order.

    Each probed sentence runs once, in batches of similar length (little padding), in
    float32 with autocast off: the CKA downstream wants the model's own values.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    by_sentence = np.argsort(probe.sentence, kind="stable")  # probe rows grouped by sentence
    sentences, starts = np.unique(probe.sentence[by_sentence], return_index=True)
    ends = np.append(starts[1:], len(by_sentence))
    order = np.argsort(data.lengths()[sentences], kind="stable")  # shortest first
    out = None
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]  # slots into `sentences`
            batch = collate(data, sentences[chosen], pad_id)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            states = torch.stack(model.hidden_states(**batch)).float()  # (L+1, b, t, h)
            if out is None:
                out = np.empty((states.shape[0], len(probe), states.shape[-1]), np.float32)
            rows = np.concatenate([by_sentence[starts[i] : ends[i]] for i in chosen])
            slot = np.repeat(np.arange(len(chosen)), ends[chosen] - starts[chosen])
            picked = states[:, torch.as_tensor(slot), torch.as_tensor(probe.position[rows])]
            out[:, rows] = picked.cpu().numpy()
    model.train(was_training)
    return out


def extract_all(model, probes: Probes, pad_id: int) -> dict[str, np.ndarray]:
    """{probe task: (L + 1, N, width) states} on every probe set."""
    return {p.meta["task"]: extract(model, data, p, pad_id=pad_id) for p, data in probes}


def log_probe_tables(probes: Probes, folder: Path) -> None:
    """The probe sets themselves (rows, token ids, what made them) as artifacts, and
    as the run's dataset inputs (context `probe`, MLflow digest = the probe digest)."""
    for probe, _ in probes:
        artifact = tracking.probe_artifact(probe.meta["task"])
        path = folder / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        table = probe.to_table()
        pq.write_table(table, path)
        tracking.log_artifact(path, str(Path(artifact).parent))
        tracking.log_probe_input(table.to_pandas(), probe.meta)


def log_activations(
    model,
    probes: Probes,
    folder: Path,
    run_id: str,
    step: int,
    *,
    pad_id: int,
    known: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Extract, write and log every hidden state on each probe set at `step` (`known`:
    states of this model already extracted, by probe task). Returns {probe task:
    (L + 1, N, width) float32 states}."""
    out = {}
    for probe, data in probes:
        task = probe.meta["task"]
        states = (known or {}).get(task)
        if states is None:
            states = extract(model, data, probe, pad_id=pad_id)
        path = folder / tracking.activations_dir(task) / tracking.activations_file(step)
        meta = {"run_id": run_id, "step": step, **encoders.describe(model.encoder)}
        activations.write_table(path, states, probe, meta)
        tracking.log_artifact(path, tracking.activations_dir(task))
        out[task] = states
    return out


# --- word tables: the same words read out by any tokenizer (data/word_probes.py) ---

WordProbes = list[tuple[ProbeSet, list[Example]]]


def word_probe_sets(cfg: TrainConfig) -> WordProbes:
    """The word probe set (and its split's examples) of every probe task; none unless the
    run asks for word tables (`word_probes`: the rule)."""
    if not cfg.word_probes:
        return []
    out = []
    for name in cfg.probe_task_list:
        spec = get_task(name)
        files = cfg.data_files if name == cfg.task else ""
        examples, _ = load_split(spec, spec.eval_split, data_dir=cfg.data_dir, data_files=files)
        probe = build_word_probe_set(
            spec, examples, split=spec.eval_split, n_words=cfg.probe_tokens,
            seed=cfg.probe_seed, rule=cfg.word_probes,
        )  # fmt: skip
        out.append((probe, examples))
    return out


@torch.no_grad()
def extract_words(
    model, tokenizer, probe: ProbeSet, examples: list[Example], *, max_length: int, pad_id: int
) -> tuple[ProbeSet, np.ndarray]:
    """The words of `probe` this tokenizer kept (truncation drops some) as a probe set of
    their own (its token_id: the word's first sub-token), and their vectors, (L + 1, kept,
    width) float32: the first sub-token's or the sub-tokens' mean, as the probe's rule says."""
    spec = get_task(probe.meta["task"])
    sentences = np.unique(probe.sentence)
    encodings, spans = word_spans(tokenizer, spec, [examples[i] for i in sentences], max_length)
    ids = [np.asarray(e["input_ids"], np.int32) for e in encodings]
    types = [
        np.asarray(e.get("token_type_ids", np.zeros(len(i))), np.int8)
        for e, i in zip(encodings, ids, strict=True)
    ]
    data = Encoded(ids, types, np.zeros(len(ids)), [np.zeros(len(i), bool) for i in ids])
    slot = {int(s): i for i, s in enumerate(sentences)}
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    kept, vectors, first_ids = [], [], []
    with torch.autocast(device_type=device.type, enabled=False):
        for chunk in eval_batches(data, 64):
            batch = {
                k: v.to(device) for k, v in collate(data, chunk, pad_id).items() if k != "labels"
            }
            states = torch.stack(model.hidden_states(**batch)).float()  # (L+1, b, t, h)
            in_chunk = {int(c): b for b, c in enumerate(chunk)}
            for row in np.flatnonzero(np.isin([slot[int(s)] for s in probe.sentence], chunk)):
                s = slot[int(probe.sentence[row])]
                positions = spans[s][int(probe.position[row])]
                if not positions:
                    continue
                picked = states[:, in_chunk[s], positions]  # (L+1, sub-tokens, h)
                first = probe.meta["word_rule"] == "first"
                vectors.append((picked[:, 0] if first else picked.mean(1)).cpu().numpy())
                kept.append(row)
                first_ids.append(int(ids[s][positions[0]]))
    model.train(was_training)
    if not kept:  # every word cut by truncation: an empty table, which compares with none
        width = model.encoder.config.hidden_size
        empty = np.zeros(0, np.int64)
        words = ProbeSet(empty, empty, empty, probe.meta)
        return words, np.zeros((model.num_layers + 1, 0, width), np.float32)
    order = np.argsort(kept, kind="stable")  # probe row order
    rows = np.asarray(kept, dtype=np.int64)[order]
    words = ProbeSet(
        probe.sentence[rows], probe.position[rows], np.asarray(first_ids)[order], probe.meta
    )
    return words, np.stack([vectors[i] for i in order], axis=1)


def log_word_tables(ctx, model, tokenizer, words: WordProbes, step: int) -> None:
    """Extract, write and log the word tables of every word probe set at `step` (ctx: the
    run's `loop.Context`); nothing where the run asks for none."""
    for probe, examples in words:
        task = probe.meta["task"]
        kept, states = extract_words(
            model, tokenizer, probe, examples, max_length=ctx.cfg.max_length, pad_id=ctx.pad_id
        )
        path = ctx.folder / tracking.words_dir(task) / tracking.activations_file(step)
        meta = {"run_id": ctx.run_id, "step": step, "word_rule": probe.meta["word_rule"]}
        meta |= {"kept": len(kept), "drawn": len(probe), **encoders.describe(model.encoder)}
        activations.write_table(path, states, kept, meta)
        tracking.log_artifact(path, tracking.words_dir(task))

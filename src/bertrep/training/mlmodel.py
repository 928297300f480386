"""Registered source models as MLflow Models: the fine-tuned encoder and its task head as
the Hugging Face model class with that head, logged with MLflow's transformers flavor.

    mlflow.transformers.load_model("models:/bertrep-sst2/1")("a gripping film")
    mlflow.pyfunc.load_model("models:/bertrep-stsb/1").predict(
        pd.DataFrame({"text": ["A man plays."], "text_pair": ["A man is playing."]}))
    mlflow models serve -m models:/bertrep-pos/1 --env-manager local

A BERT head in Hugging Face's classes is what `model.Head` is: dropout and one linear
layer on the pooled [CLS] output (`BertForSequenceClassification`; STS-B with one output
and problem_type "regression") or on every token (`BertForTokenClassification`). So
the logged model computes what the run evaluated. The encoder keeps its pooler in every
case (a token-classification model does not use it, but a transfer from POS starts from
it), and `AutoModel.from_pretrained(<model folder>/model)` loads the encoder alone.
`model.load_model` reads these folders back with the head (see `model.mlflow_parts`).
Two-task runs (two heads) log no MLflow Model: their `checkpoint` artifact loads with
`model.load_model("runs:/<id>/checkpoint", [])`, both heads included. Other families
do the same where their HF head class is bertrep's head (every tagging head but
ModernBERT's; ALBERT's sequence head with pooling=pooler): `has_hf_head`. Sources whose
head no HF class computes register the checkpoint folder instead (bertrep's loader).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
    pipeline,
)

from bertrep import encoders, tracking
from bertrep.data.tasks import get_task
from bertrep.training.model import TaskModel, task_files_of

# What a user reads instead of a label index, where the data's own names are indices.
DISPLAY_LABELS = {"sst2": ("negative", "positive")}
PIPELINE_TASKS = {"tagging": "token-classification"}  # else text-classification
INPUT_EXAMPLES = {  # one input per kind of task: the signature and the served example
    "single": pd.DataFrame({"text": ["a gripping , funny and moving film ."]}),
    "pair": pd.DataFrame(
        {"text": ["A man is playing a guitar."], "text_pair": ["A man plays the guitar."]}
    ),
    "tagging": ["EU rejects German call to boycott British lamb ."],
}


def label_names(task: str) -> tuple[str, ...]:
    spec = get_task(task)
    if spec.kind == "regression":
        return ("score",)
    return DISPLAY_LABELS.get(task, spec.labels)


def has_hf_head(model: TaskModel, task: str) -> bool:
    """Whether a Hugging Face head class computes what bertrep's `task` head does on this
    encoder (dropout and one linear layer on the pooled output or on every token): for
    tagging in every family but ModernBERT, for a sequence task only with BERT's (and
    ALBERT's) pooler (`encoders.families`)."""
    anatomy = encoders.anatomy_of(model.encoder)
    if get_task(task).kind == "tagging":
        return anatomy.hf_token_head
    return anatomy.hf_sequence_head == model.pooling


def to_transformers(model: TaskModel, task: str) -> PreTrainedModel:
    """The Hugging Face model with `task`'s head that computes what `model` does for it:
    the same encoder weights (pooler included) and the head's linear layer, in eval mode."""
    encoder = model.encoder
    if not has_hf_head(model, task):
        family = encoders.anatomy_of(encoder).family
        raise ValueError(
            f"cannot log a {family} encoder's {task} head ({model.pooling} pooling) as an "
            "MLflow Model: no Hugging Face head class computes it"
        )
    spec = get_task(task)
    config = copy.deepcopy(encoder.config)
    names = label_names(task)
    config.num_labels = spec.num_labels
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = "regression" if spec.kind == "regression" else None
    head_class = (
        AutoModelForTokenClassification
        if spec.kind == "tagging"
        else AutoModelForSequenceClassification
    )
    hf = head_class.from_config(config)
    setattr(hf, hf.base_model_prefix, copy.deepcopy(encoder))
    classifier = getattr(hf, encoders.anatomy_of(encoder).hf_classifier)
    classifier.load_state_dict(model.heads[task].out.state_dict())
    return hf.eval()


def _heads_meta(model: TaskModel, task: str) -> dict:
    return {"heads": [task], "pooling": model.pooling, **task_files_of([task])}


def input_example(task: str):
    spec = get_task(task)
    if spec.kind == "tagging":
        return INPUT_EXAMPLES["tagging"]
    return INPUT_EXAMPLES["pair" if len(spec.text_columns) == 2 else "single"]


def requirements() -> list[str]:
    """What serving the model needs, pinned as installed here (MLflow's own inference
    would ask for torchvision, which nothing uses)."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
    ]


def log_model(model: TaskModel, tokenizer, task: str, meta: dict) -> str:
    """Log `model`'s `task` head and encoder as an MLflow Model of the active run (a
    logged model, `models:/m-...`) with a signature and an input example; its URI.
    meta: what bertrep needs to load it back as a TaskModel (kept in MLmodel)."""
    spec = get_task(task)
    hf = to_transformers(model, task)
    tagger = pipeline(
        PIPELINE_TASKS.get(spec.kind, "text-classification"), model=hf, tokenizer=tokenizer
    )
    with _quiet_check():
        info = tracking.mlflow.transformers.log_model(
            tagger,
            name=tracking.MODEL_NAME,
            input_example=input_example(task),
            pip_requirements=requirements(),
            metadata={tracking.MODEL_META: {**meta, **_heads_meta(model, task)}},
        )
    return info.model_uri


@contextmanager
def _quiet_check() -> Iterator[None]:
    """MLflow loads the saved model back to check its input example. Two reports that do
    not apply, printed for every source trial of a sweep, stay silent: transformers' load
    report (the pooler kept for transfer is not in the token-classification class) and
    MLflow's hint that integer columns cannot hold missing values (POS tags never miss)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)

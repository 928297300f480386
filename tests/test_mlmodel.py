"""Registered source models are MLflow Models: the Hugging Face head models compute what
bertrep's models compute, and on the smoke study's store both MLflow loaders predict on
raw text what the run's own evaluation scored, and `mlflow models serve` answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModel

from bertrep import env, tracking
from bertrep.data.encode import collate, encode
from bertrep.data.metrics import score
from bertrep.data.tasks import get_task, load_split
from bertrep.tracking import registry, server
from bertrep.training.mlmodel import label_names, to_transformers
from bertrep.training.model import load_model, predictions

TASKS = ("sst2", "stsb", "pos")
SENTENCES = ["a gripping , funny film .", "dull and far too long"]
PAIRS = pd.DataFrame({"text": ["A man plays a guitar.", "A dog runs."],
                      "text_pair": ["A man is playing music.", "The cat sleeps."]})  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
def test_the_hugging_face_head_model_computes_what_bertrep_computes(tiny_model, task):
    model, tokenizer, _ = load_model(str(tiny_model), [task])
    torch.nn.init.normal_(model.heads[task].out.weight)  # a head that is not near zero
    model.eval()
    hf = to_transformers(model, task)
    batch = tokenizer(["the film is good .", "not a bad film at all"], padding=True,
                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ours = model(task, **batch)
        theirs = hf(**batch).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    assert hf.config.id2label == dict(enumerate(label_names(task)))
    assert hf.bert.pooler is not None  # kept, also for POS: a transfer from it starts there


# --- on the smoke study's store ---


@pytest.fixture(scope="module")
def store(smoke_study):
    """The smoke study's store through a server, and the registered version of each
    task's non-diverged source run: task -> (models:/ URI, run)."""
    with server.serve(smoke_study["env"][env.MLFLOW_TRACKING_URI], smoke_study["tmp"] / "o") as uri:
        with server.tracking_at(uri):
            client, sources = MlflowClient(), {}
            for task in TASKS:
                query = f"name = '{tracking.registered_model_name(task)}'"
                for version in client.search_model_versions(query):
                    run = client.get_run(version.run_id)
                    if run.data.tags[tracking.DIVERGED] == "false":
                        sources[task] = (f"models:/{version.name}/{version.version}", run)
            yield {"uri": uri, "sources": sources}


def eval_examples(task: str, run) -> list:
    """The examples the run evaluated: the first max_eval_examples of the eval split."""
    spec = get_task(task)
    examples, _ = load_split(spec, spec.eval_split, data_dir=run.data.params["data_dir"])
    return examples[: int(run.data.params["max_eval_examples"])]


@pytest.mark.slow
def test_every_source_task_is_registered_as_an_mlflow_model(store):
    assert set(store["sources"]) == set(TASKS)
    for task, (uri, run) in store["sources"].items():
        assert run.data.tags[tracking.REGISTERED_AS] == uri
        name = tracking.registered_model_name(task)
        version = MlflowClient().get_model_version(name, uri.rsplit("/", 1)[1])
        assert version.source.startswith(tracking.LOGGED_MODELS_URI)  # a logged model
        assert version.tags[tracking.SEED] == run.data.tags[tracking.SEED]
        assert version.tags[tracking.CONFIG_KEY] == run.data.tags[tracking.CONFIG_KEY]
        info = mlflow.models.get_model_info(uri)
        assert "transformers" in info.flavors and info.signature is not None


@pytest.mark.slow
def test_pyfunc_predicts_labels_and_scores_on_raw_text(store):
    sst2 = mlflow.pyfunc.load_model(store["sources"]["sst2"][0])
    out = sst2.predict(pd.DataFrame({"text": SENTENCES}))
    assert list(out.columns) == ["label", "score"] and len(out) == 2
    assert set(out["label"]) <= {"negative", "positive"} and out["score"].between(0.5, 1).all()
    stsb = mlflow.pyfunc.load_model(store["sources"]["stsb"][0]).predict(PAIRS)
    assert len(stsb) == 2 and stsb["score"].dtype == np.float64
    # POS: MLflow joins the sub-tokens' tags with commas (CoNLL has a "," tag too)
    (tags,) = mlflow.pyfunc.load_model(store["sources"]["pos"][0]).predict(["EU rejects it ."])
    tagger = mlflow.transformers.load_model(store["sources"]["pos"][0])
    assert tags == ",".join(t["entity"] for t in tagger("EU rejects it ."))
    tokens = tagger.tokenizer("EU rejects it .")["input_ids"]
    assert len(tagger("EU rejects it .")) == len(tokens) - 2  # every sub-token but [CLS], [SEP]


def bertrep_predictions(uri: str, task: str, examples: list) -> np.ndarray:
    """What bertrep's evaluation predicts: its model, tokenization, padding and rule."""
    spec = get_task(task)
    model, tokenizer, _ = load_model(uri, [task])
    data = encode(spec, examples, tokenizer, 128)
    batch = collate(data, list(range(len(data))), tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.no_grad():
        return predictions(spec, model.eval()(task, **batch)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_a_pyfunc_prediction_is_what_the_run_evaluated(store, task):
    uri, run = store["sources"][task]
    examples = eval_examples(task, run)
    columns = ["text", "text_pair"][: len(examples[0].texts)]
    texts = pd.DataFrame([e.texts for e in examples], columns=columns)
    out = mlflow.pyfunc.load_model(uri).predict(texts)
    spec = get_task(task)
    ours = bertrep_predictions(uri, task, examples)
    if spec.kind == "regression":
        pred = out["score"].to_numpy()
        np.testing.assert_allclose(pred, ours, rtol=0, atol=1e-5)  # one example at a time
    else:
        pred = np.array([label_names(task).index(label) for label in out["label"]])
        np.testing.assert_array_equal(pred, ours)
    gold = np.array([e.label for e in examples])
    # the run's own score, to float32 noise (a tiny model's near-constant STS-B scores
    # make the correlation sensitive to the last digits)
    got = score(spec, pred, gold)[spec.metric]
    assert got == pytest.approx(run.data.metrics[tracking.FINAL_SCORE], abs=1e-4)


@pytest.mark.slow
def test_the_transformers_pipeline_tags_words_as_the_run_evaluated(store):
    """POS: the pipeline tags every sub-token of raw text; the run scored the first
    sub-token of each word."""
    uri, run = store["sources"]["pos"]
    tagger = mlflow.transformers.load_model(uri)
    examples = eval_examples("pos", run)
    pred, gold = [], []
    for example in examples:
        text = " ".join(example.texts)
        starts = {0} | {i + 1 for i, c in enumerate(text) if c == " "}
        tokens = [t for t in tagger(text) if t["start"] in starts]
        assert len(tokens) == len(example.texts)
        pred += [label_names("pos").index(t["entity"]) for t in tokens]
        gold += example.label
    got = score(get_task("pos"), np.array(pred), np.array(gold))["accuracy"]
    assert got == pytest.approx(run.data.metrics[tracking.FINAL_SCORE], abs=1e-9)


@pytest.mark.slow
def test_bertrep_and_auto_model_load_the_registered_encoder(store):
    uri, _ = store["sources"]["sst2"]
    model, tokenizer, meta = load_model(uri, ["sst2", "stsb"])
    assert list(model.heads) == ["sst2", "stsb"] and meta["task"] == "sst2"
    folder = registry.download_model(uri)
    encoder = AutoModel.from_pretrained(os.path.join(folder, "model"))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        ours = model.encoder(**batch).last_hidden_state
        theirs = encoder(**batch).last_hidden_state
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_prediction_request(store, tmp_path):
    uri, _ = store["sources"]["sst2"]
    port = server.free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
           "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    # as from an activated venv: the scoring server runs `uvicorn` from PATH
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    served_env = os.environ | {env.MLFLOW_TRACKING_URI: store["uri"], "PATH": path}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=served_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        ping = f"http://127.0.0.1:{port}/ping"
        deadline = time.monotonic() + 120
        up = False
        while not up and time.monotonic() < deadline and proc.poll() is None:
            try:
                up = urllib.request.urlopen(ping, timeout=2).status == 200
            except OSError:
                time.sleep(0.5)  # not up yet: poll again until the deadline
        assert up, (tmp_path / "serve.log").read_text()[-3000:]
        body = json.dumps(
            {"dataframe_split": {"columns": ["text"], "data": [[s] for s in SENTENCES]}}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    local = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": SENTENCES}))
    served = pd.DataFrame(answer["predictions"])
    assert list(served["label"]) == list(local["label"])
    np.testing.assert_allclose(served["score"], local["score"], rtol=1e-6)


@pytest.mark.slow
def test_a_non_bert_source_registers_its_checkpoint(tmp_path, data_dir, mlflow_store):
    """No Hugging Face head class equals bertrep's on a RoBERTa encoder: the source
    registers bertrep's checkpoint folder, which transfer still starts from."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from bertrep.train import run
    from bertrep.training.config import Runtime, TrainConfig
    from bertrep.training.model import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, type_vocab_size=2,
                           max_position_embeddings=160,
                           pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    RobertaModel(config).save_pretrained(tmp_path / "roberta")
    tokenizer.save_pretrained(tmp_path / "roberta")
    cfg = TrainConfig(base_model=str(tmp_path / "roberta"), data_dir=str(data_dir), task="sst2",
                      max_steps=2, batch_size=8, max_train_examples=16, max_eval_examples=16,
                      probe_tokens=50)  # fmt: skip
    run_id = run(cfg, Runtime(progress=False))
    uri = MlflowClient().get_run(run_id).data.tags[tracking.REGISTERED_AS]
    version = MlflowClient().get_model_version("bertrep-sst2", uri.rsplit("/", 1)[1])
    assert version.source == f"runs:/{run_id}/{tracking.CHECKPOINT}"
    model, _, _ = load_model(uri, ["stsb"])
    assert model.encoder.config.model_type == "roberta" and list(model.heads) == ["sst2", "stsb"]

"""Shared fixtures: the real data folder, tiny random BERTs, a throwaway MLflow store, and
the smoke study (MiniLM) as `make demo SETTING=smoke` builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertrep import env

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub in tests

# Tests that start Ray (test_sweep's: sweeps, and a `ray start` cluster whose teardown,
# `ray stop --force`, stops every Ray process of the machine) or read the session's
# smoke study (built by three sweeps). Under `pytest -n 2 --dist loadgroup` (make test)
# they run one after another in one worker, which builds the smoke study once; the
# others are shared out between both workers.
RAY_MODULE = "test_sweep"


def _in_ray_group(item) -> bool:
    module = item.module.__name__.rpartition(".")[2]
    return module == RAY_MODULE or "smoke_study" in item.fixturenames


def pytest_itemcollected(item):
    # as each test is collected: xdist reads the groups in its collection_modifyitems
    if _in_ray_group(item):
        item.add_marker(pytest.mark.xdist_group("ray"))
        item.add_marker(pytest.mark.ray)
    # what a test needs, as markers to select a slice by (-m data, -m browser, ...)
    if {"data_dir", "smoke_study"} & set(item.fixturenames):
        item.add_marker(pytest.mark.data)
    if item.module.__name__.rpartition(".")[2] == "test_ui":
        item.add_marker(pytest.mark.browser)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Several workers only with --dist loadgroup, and its group must reach the ids the
    scheduler reads (it does not with pytest 9.2 and pytest-xdist 3.8): otherwise the
    smoke study is built twice and one worker's `ray stop --force` hits the other's Ray."""
    if node.config.getvalue("dist") != "loadgroup":
        raise pytest.UsageError("run the tests in several workers with --dist loadgroup")
    lost = [i for i in ids if i.startswith(f"tests/{RAY_MODULE}.py::") and "@" not in i]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist ignored the 'ray' group of {lost[0]} and {len(lost) - 1} more: "
            "pytest and pytest-xdist disagree"
        )


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Tokenization and model caches in a folder of this test session."""
    old = os.environ.get("BERTREP_CACHE_DIR")
    os.environ["BERTREP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("BERTREP_CACHE_DIR", None)
    else:
        os.environ["BERTREP_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real task data: $BERTREP_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("BERTREP_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "sst2").is_dir():
        pytest.skip(f"real task data not found at {path} (set BERTREP_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """A few dozen real rows per task (tests/data, built by tests/data/build.py): golden
    numbers that hold without the data folder."""
    return REPO / "tests" / "data"


def make_tiny_bert(folder: Path, tokenizer, layers: int = 2, width: int = 32, seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=160,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-block, width-32 random BERT with the bert-base-uncased vocabulary."""
    from transformers import AutoTokenizer

    from bertrep.training.model import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


@pytest.fixture(scope="session")
def tiny_model_other_vocab(tmp_path_factory) -> Path:
    """The same kind of model with a different (small, cased) WordPiece vocabulary."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert-other")
    words = sorted({w for w in "the a film movie is good bad it not . , and of".split()})
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *words,
        *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
        *"abcdefghijklmnopqrstuvwxyz",
    ]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False)
    return make_tiny_bert(folder, tokenizer)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store (artifacts beside it) for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # mlflow.set_experiment exports the id it chose; a fresh store must not inherit it
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    # delenv of an absent variable records nothing to undo: clean what MLflow exported
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def run_ok(cmd: list[str], store: dict, cwd: Path) -> str:
    """Run a command, assert it succeeded, return its stdout."""
    done = subprocess.run(cmd, env=store, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    return done.stdout


@pytest.fixture(scope="session")
def smoke_study(data_dir, tmp_path_factory):
    """The smoke study in one SQLite store, built once per test session by the command the
    README gives users (`make demo SETTING=smoke` runs `python -m bertrep.study --setting
    smoke`): the three smoke sweeps from MiniLM (the offline pretrained BERT) on the data
    folder through `mlflow run`, one analysis, its figures, all through the one MLflow
    server the study serves the store by.
    env: the environment its commands ran in; stdout: everything it printed; figures:
    where it copied them; seconds: its wall time. Tests that change the store work on a
    copy (`copy_study`)."""
    tmp = tmp_path_factory.mktemp("study")
    store = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    store[env.MLFLOW_TRACKING_URI] = f"sqlite:///{tmp / 'mlflow.db'}"
    store[env.DATA_DIR] = str(data_dir)
    store[env.CACHE_DIR] = str(tmp / "cache")
    store["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{store['PATH']}"
    figures = tmp / "figures"
    cmd = [sys.executable, "-m", "bertrep.study", "--setting", "smoke", "--figures", str(figures)]
    started = time.monotonic()
    out = run_ok(cmd, store, tmp)
    seconds = time.monotonic() - started
    return {"env": store, "tmp": tmp, "stdout": out, "figures": figures, "seconds": seconds}


def copy_study(study: dict, folder: Path) -> dict[str, str]:
    """A copy of the smoke study's store (database, artifacts, caches) in `folder`; the
    environment that points at it."""
    shutil.copytree(study["tmp"], folder)
    store = dict(study["env"])
    store[env.MLFLOW_TRACKING_URI] = f"sqlite:///{folder / 'mlflow.db'}"
    store[env.CACHE_DIR] = str(folder / "cache")
    return store


BPE_TEXT = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn went to Brussels and the European Commission said on Thursday",
    "the film is good and not bad at all , a quiet and rejected movie",
    "a man is slicing a tomato ; someone cuts a tomato with a knife",
    "Germany 's representative to the European Union 's veterinary committee",
]


@pytest.fixture(scope="session")
def tiny_bpe_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer of RoBERTa's kind (<s>, </s>, <pad>, <unk>, <mask>),
    trained here on a few sentences and saved as a RobertaTokenizerFast folder: the
    non-WordPiece tokenizer the tests can have without the hub."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(BPE_TEXT, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
    folder = tmp_path_factory.mktemp("tiny-bpe")
    RobertaTokenizerFast(vocab=model["vocab"], merges=merges).save_pretrained(folder)
    return folder

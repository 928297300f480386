"""Activation tables: right values at the probe tokens, one column per layer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertrep.data import activations
from bertrep.data.encode import collate, encode, tokenizer_digest
from bertrep.data.probe_sets import build_probe_set
from bertrep.data.tasks import Example, get_task
from bertrep.training import readout as probing
from bertrep.training.model import load_model


@pytest.fixture(scope="module")
def setup(tiny_model):
    model, tok, _ = load_model(str(tiny_model), ["sst2"])
    examples = [Example((" ".join(["word"] * (3 + i % 9)) + f" end {i}",), 0) for i in range(30)]
    data = encode(get_task("sst2"), examples, tok, 32)
    probe = build_probe_set(
        data, task="sst2", split="validation", file="mem", tokenizer_digest=tokenizer_digest(tok),
        max_length=32, n_tokens=80, seed=3,
    )  # fmt: skip
    return model, tok, data, probe


def test_extract_reads_the_probe_tokens(setup):
    model, tok, data, probe = setup
    states = probing.extract(model, data, probe, pad_id=tok.pad_token_id, batch_size=7)
    assert states.shape == (3, 80, 32)  # embeddings + 2 blocks
    model.eval()
    with torch.no_grad():
        for row in [0, 17, 79]:
            s, pos = probe.sentence[row], probe.position[row]
            batch = collate(data, [s], tok.pad_token_id)
            batch.pop("labels")
            direct = torch.stack(model.hidden_states(**batch))[:, 0, pos]
            np.testing.assert_allclose(states[:, row], direct.numpy(), rtol=1e-5, atol=1e-5)


def test_table_one_column_per_layer(setup, tmp_path):
    model, tok, data, probe = setup
    states = probing.extract(model, data, probe, pad_id=tok.pad_token_id)
    path = activations.write_table(
        tmp_path / "a.parquet", states, probe, {"run_id": "r1", "step": 5}
    )
    schema = pq.read_schema(path)
    assert [n for n in schema.names if n.startswith("layer_")] == ["layer_0", "layer_1", "layer_2"]
    one = pq.read_table(path, columns=["layer_1"])  # pyarrow alone, one layer
    assert one.num_rows == 80 and one.schema.field("layer_1").type.list_size == 32
    meta = activations.read_meta(path)
    assert meta["probe_digest"] == probe.digest and meta["run_id"] == "r1" and meta["step"] == 5
    assert meta["dtype"] == "float16"
    back = activations.read_layers(path, [2])[2]
    assert back.dtype == np.float16
    np.testing.assert_allclose(back, states[2], rtol=1e-3, atol=1e-3)


def test_row_count_must_match_probe(setup, tmp_path):
    _, _, _, probe = setup
    with pytest.raises(ValueError, match="states have 3 rows"):
        activations.write_table(tmp_path / "x.parquet", np.zeros((2, 3, 4)), probe, {})


def test_reading_a_table_needs_no_torch(setup, tmp_path):
    model, tok, data, probe = setup
    path = activations.write_table(
        tmp_path / "a.parquet", probing.extract(model, data, probe, pad_id=0), probe, {}
    )
    code = (
        "import sys; from bertrep.data import activations as a; "
        f"s = a.read_states({str(path)!r}); a.check_comparable({str(path)!r}, {str(path)!r}); "
        "assert s.shape == (3, 80, 32), s.shape; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_tables_are_clear_errors(setup, tmp_path):
    model, tok, data, probe = setup
    states = probing.extract(model, data, probe, pad_id=tok.pad_token_id)
    good = activations.write_table(tmp_path / "good.parquet", states, probe, {})
    nan = states.copy()
    nan[1, 5, 3] = np.nan
    bad = activations.write_table(tmp_path / "nan.parquet", nan, probe, {})
    with pytest.raises(activations.TableError, match="nan.parquet: layer_1 holds NaN"):
        activations.read_states(bad)
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(activations.TableError, match="cut.parquet: not a readable Parquet"):
        activations.read_states(truncated)
    other = build_probe_set(
        data, task="sst2", split="validation", file="mem", tokenizer_digest=tokenizer_digest(tok),
        max_length=32, n_tokens=80, seed=4,
    )  # fmt: skip
    elsewhere = activations.write_table(
        tmp_path / "other.parquet", probing.extract(model, data, other, pad_id=0), other, {}
    )
    with pytest.raises(activations.TableError, match="probe sets differ"):
        activations.check_comparable(good, elsewhere)
    activations.check_comparable(good, bad)  # same rows: comparable (NaN is found on reading)

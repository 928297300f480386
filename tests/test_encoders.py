"""Every encoder family through one anatomy (bertrep.encoders): blocks k+1..L from a
cached hidden state k compute the full forward, freezing leaves the frozen part bit for
bit, checkpoints load back, heads pool as the run says, HF head classes compute
bertrep's heads where the family table says they do. Tiny random configs of each family
(tests/encoder_families.py) with the MiniLM tokenizer; nothing from the hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from encoder_families import FAMILY_TYPES, MORE_TYPES, make_tiny_encoder, tiny_config
from transformers import AutoModel, AutoTokenizer

from bertrep import encoders
from bertrep.errors import InputError
from bertrep.training import mlmodel
from bertrep.training.model import UNTIED, load_model, minilm_path, save_checkpoint

LAYERS = 4


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module", params=FAMILY_TYPES + MORE_TYPES)
def family(request, tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, make_tiny_encoder(request.param, folder, tokenizer)


def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Sentence pairs of different lengths (padding, token types 0 and 1)."""
    first = ["the film is good .", "not a bad film at all , in fact a gripping one", "dull"]
    second = ["it is .", "a man plays a guitar on a long and winding road home", "yes"]
    return dict(tokenizer(first, second, padding=True, return_tensors="pt"))


def untied(model_type: str) -> dict:
    return {"untie_blocks": model_type == "albert"}


def test_blocks_from_every_hidden_state_compute_the_full_forward(family, tokenizer):
    model_type, folder = family
    model = load_model(str(folder), ["sst2"])[0].eval()
    inputs = batch(tokenizer)
    with torch.no_grad():
        states = model.hidden_states(**inputs)
        assert len(states) == LAYERS + 1
        for k in range(LAYERS + 1):
            if k:  # hidden state k from the tokens (what the prefix cache stores)
                prefix = encoders.run(model.encoder, **inputs, stop=k)
                torch.testing.assert_close(prefix, states[k], rtol=0, atol=1e-5)
            top = encoders.run(model.encoder, **inputs, start=k, states=states[k] if k else None)
            torch.testing.assert_close(top, states[LAYERS], rtol=0, atol=1e-5)
            model.frozen_layers = k
            cached = model("sst2", **inputs, prefix_states=states[k] if k else None)
            model.frozen_layers = 0
            torch.testing.assert_close(cached, model("sst2", **inputs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, LAYERS])
def test_one_step_leaves_the_frozen_part_bit_for_bit_and_the_cache_valid(family, tokenizer, k):
    model_type, folder = family
    model = load_model(str(folder), ["sst2"], **untied(model_type))[0]
    model.freeze(k)
    frozen = {n: p.detach().clone() for n, p in model.encoder.named_parameters()
              if not p.requires_grad}  # fmt: skip
    assert frozen and all(n.startswith(tuple(f"{p}." for p in encoders.frozen_paths(
        model.encoder, k))) for n in frozen)  # fmt: skip
    inputs = batch(tokenizer)
    with torch.no_grad():
        cached = encoders.run(model.encoder, **inputs, stop=k)
    model.train()
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = model("sst2", **inputs, prefix_states=cached).square().sum()
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    for name, before in frozen.items():
        assert torch.equal(model.encoder.get_parameter(name), before), name
    assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)
    with torch.no_grad():
        assert torch.equal(encoders.run(model.encoder.eval(), **inputs, stop=k), cached)


def test_a_frozen_checkpoint_loads_back_with_equal_outputs(family, tokenizer, tmp_path):
    model_type, folder = family
    model, tok, _ = load_model(str(folder), ["pos"], **untied(model_type))
    model.freeze(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    meta = {"base_model": str(folder), "frozen_layers": 2, UNTIED: model_type == "albert"}
    save_checkpoint(model, tok, tmp_path / "checkpoint", meta)
    again = load_model(str(tmp_path / "checkpoint"), [])[0].eval()
    inputs = batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(again("pos", **inputs), model.eval()("pos", **inputs),
                                   rtol=0, atol=0)  # fmt: skip


def test_token_types_go_only_to_encoders_that_take_them(family, tokenizer):
    model_type, folder = family
    model = load_model(str(folder), [])[0]
    given = encoders.inputs(model.encoder, **batch(tokenizer))
    assert ("token_type_ids" in given) == (model_type not in ("distilbert", "modernbert", "mpnet"))


def test_pooling_auto_is_the_familys_and_mean_ignores_padding(family, tokenizer):
    model_type, folder = family
    model = load_model(str(folder), ["sst2"])[0]
    assert model.pooling == ("pooler" if model_type == "bert" else "first")
    mean = load_model(str(folder), ["sst2"], pooling="mean")[0].eval()
    alone = tokenizer(["dull"], return_tensors="pt")
    padded = tokenizer(["dull", "a much longer sentence than dull"], padding=True,
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(mean("sst2", **alone)[0], mean("sst2", **padded)[0],
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_pooling_by_a_pooler_the_encoder_lacks_is_one_line(tmp_path, tokenizer):
    folder = make_tiny_encoder("deberta-v2", tmp_path, tokenizer)
    with pytest.raises(InputError, match="pooling=pooler: this DeBERTa-v2/v3 encoder has no"):
        load_model(str(folder), ["sst2"], pooling="pooler")


def test_an_unknown_model_type_is_refused_by_name(tmp_path, tokenizer):
    from transformers import GPT2Config

    AutoModel.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    known = "albert, bert, deberta, deberta-v2, distilbert"
    with pytest.raises(InputError, match=rf"model type 'gpt2' is not an encoder family .* {known}"):
        load_model(str(tmp_path), ["sst2"])


def test_albert_freezes_its_shared_blocks_all_or_untied(tmp_path, tokenizer):
    folder = make_tiny_encoder("albert", tmp_path / "albert", tokenizer)
    tied = load_model(str(folder), ["sst2"])[0].eval()
    with pytest.raises(InputError, match="frozen_layers=1: ALBERT's blocks share their weights"):
        tied.freeze(1)
    tied.freeze(LAYERS)  # all of them: the shared weights freeze as one
    untied_model = load_model(str(folder), ["sst2"], untie_blocks=True)[0].eval()
    assert len(untied_model.encoder.encoder.albert_layer_groups) == LAYERS
    inputs = batch(tokenizer)
    with torch.no_grad():  # untying changes no number
        torch.testing.assert_close(untied_model.hidden_states(**inputs)[-1],
                                   tied.hidden_states(**inputs)[-1], rtol=0, atol=0)  # fmt: skip
    untied_model.freeze(1)
    frozen = encoders.frozen_paths(untied_model.encoder, 1)
    assert frozen == ["embeddings", "encoder.embedding_hidden_mapping_in",
                      "encoder.albert_layer_groups.0"]  # fmt: skip


def test_frozen_paths_name_each_familys_stem_and_blocks(tokenizer):
    expected = {
        "bert": ["embeddings", "encoder.layer.0", "encoder.layer.1"],
        "electra": ["embeddings", "embeddings_project", "encoder.layer.0", "encoder.layer.1"],
        "distilbert": ["embeddings", "transformer.layer.0", "transformer.layer.1"],
        "deberta-v2": [
            "embeddings",
            "encoder.rel_embeddings",
            "encoder.LayerNorm",
            "encoder.layer.0",
            "encoder.layer.1",
        ],  # fmt: skip
        "modernbert": ["embeddings", "layers.0", "layers.1"],
    }
    for model_type, paths in expected.items():
        encoder = AutoModel.from_config(tiny_config(model_type, tokenizer))
        assert encoders.frozen_paths(encoder, 2) == paths, model_type
        assert encoders.frozen_paths(encoder, 0) == []


HF_TAGGING = {t for t in FAMILY_TYPES + MORE_TYPES if t != "modernbert"}


@pytest.mark.parametrize("task", ["pos", "sst2"])
def test_hf_head_classes_compute_bertreps_heads_where_the_table_says(family, tokenizer, task):
    model_type, folder = family
    pooling = "pooler" if model_type in ("bert", "albert") else "auto"
    model = load_model(str(folder), [task], pooling=pooling)[0]
    torch.nn.init.normal_(model.heads[task].out.weight)
    model.eval()
    expected = model_type in HF_TAGGING if task == "pos" else model_type in ("bert", "albert")
    assert mlmodel.has_hf_head(model, task) == expected
    if not expected:
        with pytest.raises(ValueError, match="no Hugging Face head class computes it"):
            mlmodel.to_transformers(model, task)
        return
    hf = mlmodel.to_transformers(model, task)
    inputs = batch(tokenizer)
    with torch.no_grad():
        theirs = hf(**encoders.inputs(model.encoder, **inputs)).logits
        torch.testing.assert_close(theirs, model(task, **inputs), rtol=0, atol=1e-6)


def test_describe_says_what_hidden_state_l_is(family):
    """Activation tables carry this: ModernBERT's hidden state L is past its final norm."""
    model_type, folder = family
    encoder = load_model(str(folder), [])[0].encoder
    last = "block L after the final norm (final_norm)" if model_type == "modernbert" else (
        "output of block L"
    )  # fmt: skip
    kind = model_type.removesuffix("-conv")  # a DeBERTa-v2 with its convolution
    assert encoders.describe(encoder) == {"model_type": kind, "last_hidden_state": last}


def test_docs_table_matches_every_familys_anatomy():
    """docs/encoders.md has a row per family, saying what the anatomy says of hidden state
    L and of `pooling=auto`."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "encoders.md").read_text()
    rows = {line.split("|")[1].split("`")[1]: line for line in page.splitlines()
            if line.startswith("| `")}  # fmt: skip
    for model_type, anatomy in encoders.FAMILIES.items():
        cells = [cell.strip() for cell in rows[model_type].split("|")]
        assert encoders.last_hidden_state(anatomy) in cells, model_type
        assert f"`{anatomy.default_pooling}`" in cells, model_type
        assert anatomy.blocks in cells[3], model_type


def test_at_k_equal_l_nothing_of_the_encoder_trains_cached_or_not(tmp_path, tokenizer):
    """Hidden state L of ModernBERT includes its final norm: with every block frozen the
    norm is frozen too, so a head-only run trains the same with or without the cache."""
    folder = make_tiny_encoder("modernbert", tmp_path / "modernbert", tokenizer)
    model = load_model(str(folder), ["sst2"])[0]
    model.freeze(LAYERS)
    assert "final_norm" in encoders.frozen_paths(model.encoder, LAYERS)
    assert "final_norm" not in encoders.frozen_paths(model.encoder, LAYERS - 1)
    model.train()
    model("sst2", **batch(tokenizer)).square().sum().backward()  # the uncached path
    assert all(p.grad is None for p in model.encoder.parameters())


def test_albert_with_fewer_groups_than_blocks_runs_exactly_from_every_state(tokenizer):
    config = tiny_config("albert", tokenizer)
    config.num_hidden_groups = 2  # blocks 1-2 share one group, 3-4 the other
    encoder = AutoModel.from_config(config).eval()
    inputs = batch(tokenizer)
    with torch.no_grad():
        states = encoder(**inputs, output_hidden_states=True).hidden_states
        for k in range(1, LAYERS + 1):
            torch.testing.assert_close(encoders.run(encoder, **inputs, stop=k), states[k],
                                       rtol=0, atol=1e-5)  # fmt: skip
            top = encoders.run(encoder, **inputs, start=k, states=states[k])
            torch.testing.assert_close(top, states[LAYERS], rtol=0, atol=1e-5)
    assert encoder.config.num_hidden_layers == LAYERS and encoder.config.num_hidden_groups == 2


def test_untie_blocks_is_refused_where_no_block_shares_weights(tmp_path, tokenizer):
    folder = make_tiny_encoder("roberta", tmp_path / "roberta", tokenizer)
    with pytest.raises(InputError, match="untie_blocks: RoBERTa's blocks share no weights"):
        load_model(str(folder), ["sst2"], untie_blocks=True)


def test_a_kept_head_pools_as_it_was_trained(tmp_path, tokenizer):
    """Sequential training keeps A's head: it must pool as it did; a fresh head may not."""
    folder = make_tiny_encoder("roberta", tmp_path / "roberta", tokenizer)
    model, tok, _ = load_model(str(folder), ["sst2"], pooling="mean")
    save_checkpoint(model, tok, tmp_path / "checkpoint", {})
    with pytest.raises(InputError, match="its sst2 head pools by mean, this run by first"):
        load_model(str(tmp_path / "checkpoint"), ["sst2"], pooling="first")
    again = load_model(str(tmp_path / "checkpoint"), ["stsb"], pooling="first")[0]
    assert again.pooling == "first"
    assert load_model(str(tmp_path / "checkpoint"), ["sst2"])[0].pooling == "mean"

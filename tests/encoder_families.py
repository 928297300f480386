"""Tiny random encoders of every family bertrep supports, built here (no hub): hidden 32,
4 blocks, each family's own quirk switched on (ELECTRA's and ALBERT's narrower
embeddings, DeBERTa-v2's relative attention, ModernBERT's local and global layers)."""

from __future__ import annotations

from pathlib import Path

FAMILY_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta-v2",
    "modernbert",
)
# also described as data, tested by tests/test_encoders.py only (not the end-to-end runs)
MORE_TYPES = ("deberta", "mpnet", "deberta-v2-conv")


def tiny_config(model_type: str, tokenizer, layers: int = 4, width: int = 32):
    """A small random config of `model_type` for `tokenizer`'s vocabulary and ids."""
    import transformers

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": 160,
    }
    common = {
        **ids,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * width,
    }
    relative = {
        "relative_attention": True,
        "pos_att_type": ["p2c", "c2p"],
        "position_buckets": 8,
        "max_relative_positions": 32,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "position_biased_input": False,
        "type_vocab_size": 0,
    }
    build = {
        "bert": lambda: transformers.BertConfig(**common),
        "roberta": lambda: transformers.RobertaConfig(**common, type_vocab_size=2),
        "xlm-roberta": lambda: transformers.XLMRobertaConfig(**common, type_vocab_size=2),
        "distilbert": lambda: transformers.DistilBertConfig(
            **ids, dim=width, n_layers=layers, n_heads=2, hidden_dim=2 * width
        ),
        "albert": lambda: transformers.AlbertConfig(**common, embedding_size=16),
        "electra": lambda: transformers.ElectraConfig(**common, embedding_size=16),
        "deberta-v2": lambda: transformers.DebertaV2Config(**common, **relative),
        # DeBERTa-v2's convolution after block 1 (conv_kernel_size > 0, as in v2-xlarge)
        "deberta-v2-conv": lambda: transformers.DebertaV2Config(
            **common, **relative, conv_kernel_size=3
        ),
        "deberta": lambda: transformers.DebertaConfig(
            **common, relative_attention=True, pos_att_type=["p2c", "c2p"]
        ),
        "mpnet": lambda: transformers.MPNetConfig(**common),
        "modernbert": lambda: transformers.ModernBertConfig(
            **common,
            global_attn_every_n_layers=2,
            local_attention=4,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
    }
    return build[model_type]()


def make_tiny_encoder(model_type: str, folder: Path, tokenizer, seed: int = 0) -> Path:
    """Save a tiny random `model_type` encoder and `tokenizer` to `folder`."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(model_type, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

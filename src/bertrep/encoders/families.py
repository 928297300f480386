"""Each encoder family's anatomy, as data: where its blocks are, what runs before the
first block (the stem) and after the last, and what Hugging Face's head classes compute.

Module paths are relative to the encoder (`AutoModel`'s model, e.g. `BertModel`). Every
operation on an encoder's parts (freezing, the frozen-prefix cache, the trained-part
checkpoint, the frozen digest) reads them from here through `bertrep.encoders`; no
other module spells a family's module names. A family not listed is refused by name.

Hidden state 0 is the input of block 1 (the stem's output), hidden state l the output
of block l, and hidden state L what the model returns as its last hidden state: after
the final norm where a family has one (ModernBERT), as `output_hidden_states` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anatomy:
    family: str  # the name users read (docs table, errors)
    blocks: str  # the ModuleList of blocks 1..L
    # Run before block 1, in order: the first takes the tokens, the others map its output
    # (ELECTRA's and ALBERT's embedding projections). Frozen with any k >= 1.
    stem: tuple[str, ...] = ("embeddings",)
    # Read by every block, not by the stem (DeBERTa's relative-position embeddings and
    # their norm, MPNet's relative attention bias): frozen with the stem.
    shared: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # after block L, part of hidden state L (a final norm)
    # Runs after block 1 only (DeBERTa-v2's convolution, conv_kernel_size > 0): frozen
    # with block 1; a run from hidden state k >= 1 must not run it again.
    after_first: tuple[str, ...] = ()
    default_pooling: str = "first"  # how a sequence head pools when the run says `auto`
    tied_blocks: bool = False  # one set of block weights run L times (ALBERT)
    # ALBERT's pooler is a bare linear layer (and `pooler_activation`) that the model
    # applies to the first token; BERT's (RoBERTa's, MPNet's) takes the sequence.
    pooler_on_first: bool = False
    # The pooling under which HF's *ForSequenceClassification is dropout and one linear
    # layer on the pooled output (what bertrep's head is); None: its head is more.
    hf_sequence_head: str | None = None
    hf_token_head: bool = True  # *ForTokenClassification: dropout and one linear layer
    hf_classifier: str = "classifier"  # that linear layer's name in the HF class


_BERT_LIKE = dict(blocks="encoder.layer")
_DEBERTA = dict(blocks="encoder.layer", shared=("encoder.rel_embeddings", "encoder.LayerNorm"))

FAMILIES: dict[str, Anatomy] = {
    "bert": Anatomy("BERT", **_BERT_LIKE, default_pooling="pooler", hf_sequence_head="pooler"),
    "roberta": Anatomy("RoBERTa", **_BERT_LIKE),
    "xlm-roberta": Anatomy("XLM-RoBERTa", **_BERT_LIKE),
    "electra": Anatomy("ELECTRA", **_BERT_LIKE, stem=("embeddings", "embeddings_project")),
    "distilbert": Anatomy("DistilBERT", blocks="transformer.layer"),
    "albert": Anatomy(
        "ALBERT",
        blocks="encoder.albert_layer_groups",
        stem=("embeddings", "encoder.embedding_hidden_mapping_in"),
        tied_blocks=True,
        pooler_on_first=True,
        hf_sequence_head="pooler",
    ),
    "deberta": Anatomy("DeBERTa", **_DEBERTA),
    "deberta-v2": Anatomy("DeBERTa-v2/v3", **_DEBERTA, after_first=("encoder.conv",)),
    "mpnet": Anatomy("MPNet", blocks="encoder.layer", shared=("encoder.relative_attention_bias",)),
    "modernbert": Anatomy(
        "ModernBERT", blocks="layers", after=("final_norm",), hf_token_head=False
    ),
}

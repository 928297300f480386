"""What bertrep does to an encoder's parts, for every family in `families.FAMILIES`.

    anatomy_of(encoder)                        # the family's Anatomy; unknown: InputError
    frozen_paths(encoder, k)                   # stem, shared parts and blocks 1..k
    run(encoder, batch, start=k, states=h_k)   # blocks k+1..L from hidden state k

`run` calls the model's own forward with the stem replaced by the given hidden states
and the block list cut to the blocks asked for, so the model builds its own masks,
rotary or relative positions and sliding windows: blocks k+1..L from a cached hidden
state k compute what the full forward computes (tests/test_encoders.py, every family,
every k).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from bertrep.encoders.families import FAMILIES, Anatomy
from bertrep.errors import InputError

__all__ = [
    "FAMILIES",
    "Anatomy",
    "anatomy_of",
    "describe",
    "frozen_paths",
    "last_hidden_state",
    "run",
    "untie",
]


def anatomy_of(model: nn.Module) -> Anatomy:
    """The anatomy of an encoder (or of anything with its config)."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise InputError(
            f"model type {model_type!r} is not an encoder family bertrep knows; it knows {known}"
        )
    return FAMILIES[model_type]


def describe(encoder: nn.Module) -> dict[str, str]:
    """What an activation table records of its encoder, so that a table read alone says
    what its layers are: the model type, and what its hidden state L is."""
    last = last_hidden_state(anatomy_of(encoder))
    return {"model_type": encoder.config.model_type, "last_hidden_state": last}


def num_layers(encoder: nn.Module) -> int:
    return encoder.config.num_hidden_layers


def last_hidden_state(anatomy: Anatomy) -> str:
    """What hidden state L is, in words (activation tables and docs/encoders.md say it): a
    family with a final norm (`after`) reads out block L after that norm, not block L's
    own output, so its layer profile's last point is another kind of point."""
    if not anatomy.after:
        return "output of block L"
    return f"block L after the final norm ({', '.join(anatomy.after)})"


def takes_token_types(encoder: nn.Module) -> bool:
    """Whether the encoder's forward reads token-type ids (DistilBERT's, ModernBERT's
    do not)."""
    return "token_type_ids" in inspect.signature(encoder.forward).parameters


def is_tied(encoder: nn.Module) -> bool:
    """ALBERT with fewer block weights than blocks (its pretrained form)."""
    groups = getattr(encoder.config, "num_hidden_groups", num_layers(encoder))
    return anatomy_of(encoder).tied_blocks and groups < num_layers(encoder)


def _block_index(encoder: nn.Module, i: int) -> int:
    """The module (in the block list) that runs as block i + 1."""
    if not anatomy_of(encoder).tied_blocks:
        return i
    groups = encoder.config.num_hidden_groups
    return int(i / (num_layers(encoder) / groups))


def _present(encoder: nn.Module, path: str) -> bool:
    module = encoder
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True


def frozen_paths(encoder: nn.Module, k: int) -> list[str]:
    """Module paths frozen with k: none for k = 0, else the stem, what every block reads,
    and blocks 1..k (with k = L what follows block L too: hidden state L includes it).
    ALBERT's shared blocks freeze only all together (k = L) unless the run unties them
    (`untie_blocks`)."""
    anatomy, layers = anatomy_of(encoder), num_layers(encoder)
    if not 0 <= k <= layers:
        raise InputError(f"frozen_layers={k} is outside 0..{layers} for this model")
    if k == 0:
        return []
    if is_tied(encoder) and k < layers:
        raise InputError(
            f"frozen_layers={k}: {anatomy.family}'s blocks share their weights, so blocks "
            f"1..{k} cannot freeze without blocks {k + 1}..{layers}; set untie_blocks=true "
            "(each block its own copy of the shared weights) or freeze 0 or all"
        )
    blocks = dict.fromkeys(f"{anatomy.blocks}.{_block_index(encoder, i)}" for i in range(k))
    paths = [*anatomy.stem, *anatomy.shared, *blocks, *anatomy.after_first]
    if k == layers:  # hidden state L includes what follows block L (a final norm)
        paths += anatomy.after
    return [p for p in paths if _present(encoder, p)]


def frozen_modules(encoder: nn.Module, k: int) -> list[nn.Module]:
    return [encoder.get_submodule(path) for path in frozen_paths(encoder, k)]


def untie(encoder: nn.Module) -> None:
    """Give each of ALBERT's L blocks its own copy of the weights it shares (in place):
    the same function, now with L block weights, so blocks can freeze one by one. The
    config says so (num_hidden_groups = L), so a saved encoder loads back untied."""
    anatomy, layers = anatomy_of(encoder), num_layers(encoder)
    if not anatomy.tied_blocks:
        raise InputError(f"untie_blocks: {anatomy.family}'s blocks share no weights to untie")
    if not is_tied(encoder):
        return
    shared = encoder.get_submodule(anatomy.blocks)
    copies = [copy.deepcopy(shared[_block_index(encoder, i)]) for i in range(layers)]
    _set(encoder, anatomy.blocks, nn.ModuleList(copies))
    encoder.config.num_hidden_groups = layers


class _Given(nn.Module):
    """Stands in for the stem: returns the hidden states it was given."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.states


def _set(encoder: nn.Module, path: str, module: nn.Module | None) -> None:
    parent, _, name = path.rpartition(".")
    setattr(encoder.get_submodule(parent) if parent else encoder, name, module)


@contextmanager
def _swapped(encoder: nn.Module, path: str, module: nn.Module | None) -> Iterator[None]:
    original = encoder.get_submodule(path)
    _set(encoder, path, module)
    try:
        yield
    finally:
        _set(encoder, path, original)


@contextmanager
def _config(encoder: nn.Module, **values) -> Iterator[None]:
    before = {name: getattr(encoder.config, name) for name in values}
    for name, value in values.items():
        setattr(encoder.config, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(encoder.config, name, value)


@contextmanager
def _cut(encoder: nn.Module, start: int, stop: int, states) -> Iterator[None]:
    """The encoder, for the length of the block, as one that runs blocks start+1..stop on
    hidden state `start` (`states`; the stem runs when start = 0)."""
    anatomy = anatomy_of(encoder)
    with ExitStack() as stack:
        if start > 0:
            present = [p for p in anatomy.stem if _present(encoder, p)]
            stack.enter_context(_swapped(encoder, present[0], _Given(states)))
            for path in present[1:]:
                stack.enter_context(_swapped(encoder, path, nn.Identity()))
            for path in filter(lambda p: _present(encoder, p), anatomy.after_first):
                stack.enter_context(_swapped(encoder, path, None))
        if stop < num_layers(encoder):
            for path in filter(lambda p: _present(encoder, p), anatomy.after):
                stack.enter_context(_swapped(encoder, path, nn.Identity()))
        if anatomy.tied_blocks:  # the forward loops over the config's layer count: one
            # module per block run (shared ones repeated), as many groups as blocks
            shared = encoder.get_submodule(anatomy.blocks)
            blocks = [shared[_block_index(encoder, i)] for i in range(start, stop)]
            stack.enter_context(_swapped(encoder, anatomy.blocks, nn.ModuleList(blocks)))
            n = stop - start
            stack.enter_context(_config(encoder, num_hidden_layers=n, num_hidden_groups=n))
        else:
            blocks = encoder.get_submodule(anatomy.blocks)[start:stop]
            stack.enter_context(_swapped(encoder, anatomy.blocks, blocks))
        yield


def pooler_output(encoder: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    """The encoder's own pooler on its last hidden states (b, t, h) -> (b, h), as its
    forward computes it."""
    if anatomy_of(encoder).pooler_on_first:
        return encoder.pooler_activation(encoder.pooler(sequence[:, 0]))
    return encoder.pooler(sequence)


def inputs(encoder: nn.Module, input_ids, attention_mask, token_type_ids=None) -> dict:
    """The keyword arguments of the encoder's forward: token types only where it takes
    them."""
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None and takes_token_types(encoder):
        out["token_type_ids"] = token_type_ids
    return out


def run(
    encoder: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden state `stop` (default L), (b, t, h), computed from hidden state `start`
    (`states`, (b, t, h); the tokens when start = 0) by blocks start+1..stop. The token
    ids still go in: the model reads their shape and device, and builds its masks."""
    layers = num_layers(encoder)
    stop = layers if stop is None else stop
    if not 0 <= start <= stop <= layers or stop == 0:
        raise ValueError(f"run: hidden state {stop} from {start} is not in 1..{layers} upwards")
    if (start > 0) != (states is not None):
        raise ValueError(f"run: from hidden state {start} needs its states given (and 0 none)")
    if start == stop and states is not None:
        return states  # no block to run (some families' forwards need one)
    with _cut(encoder, start, stop, states):
        out = encoder(**inputs(encoder, input_ids, attention_mask, token_type_ids))
    return out.last_hidden_state

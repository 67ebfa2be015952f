"""Presets: named sets of renames for a framework's or model family's naming, to Flax.

A preset's rules run first (first match wins among them), then the user's ``rules``. A preset may also

- name the Flax linen *collection* each tensor belongs in: when the target tree is a linen
  ``variables`` dict (it has a top-level ``params`` collection), every renamed checkpoint name ``n`` is
  also addressable as ``<collection>/n``;
- derive some rules from the checkpoint's names (``dynamic``: T5's relative position bias is shared
  when only block 0 has one);
- add *scanned* names (``scan``: stacking rules, ``{i}`` in the pattern only) beside the per-layer
  ones, with their ``stack_axis``, so one preset loads an unscanned or a scanned model;
- ``fit`` a tensor to its target's shape when the two differ only by split or merged adjacent axes
  (Model Garden's 3-D attention kernels into ``[H, H]`` Dense kernels);
- mark optimizer state (``skip``) so it is not reported as unused.

Presets: ``keras`` (Keras layers -> Flax linen/NNX), ``t5x`` (Mesh-TensorFlow T5 -> T5X) and ``bert``
(google-research/bert TF1 and Model Garden TF2 -> transformers' ``FlaxBertModel``). See docs/presets.md.

Example::

    preset = get_preset("keras")
    rename("bn/moving_mean", preset.rules)      # 'bn/mean'
    preset.collection("bn/moving_mean")         # 'batch_stats'
"""

from __future__ import annotations

from typing import Any

from ...errors import MappingError
from ..rules import rename_layer
from .base import Preset
from .bert import BERT
from .keras import KERAS
from .t5x import T5X

PRESETS: dict[str, Preset] = {p.name: p for p in (KERAS, T5X, BERT)}


def get_preset(preset: str | Preset | None) -> Preset | None:
    """The :class:`Preset` named ``preset`` (or ``preset`` itself); None for None."""
    if preset is None or isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise MappingError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[preset]


def preview(preset: str | Preset, ckpt: Any) -> dict[str, dict[str, Any]]:
    """What each tensor of ``ckpt`` becomes under ``preset``: ``{key: {"becomes", "layer", "scanned",
    "left_out"}}``.

    ``becomes`` is the renamed name (None: dropped), ``layer`` the layer index a stacking rule took
    out of it, ``scanned`` the preset's scanned name (``"<name>[<layer>]"``) if it has one, ``left_out``
    why a load leaves it out by default (optimizer state, bookkeeping) or None.

    Example::

        preview("t5x", ckpt)["shared/embedding"]["becomes"]     # 'target/token_embedder/embedding'
    """
    from ...naming import default_names

    found = get_preset(preset)
    rules = found.rules_for(list(ckpt.names))
    out = {}
    for n in default_names(ckpt):
        candidates = [n.name, *n.aliases]
        renamed = [(c, *rename_layer(c, rules)) for c in candidates]
        name, new, layer = next((r for r in renamed if r[1] != r[0] or r[2] is not None), renamed[0])
        scanned, index = rename_layer(new, found.scan) if new is not None and layer is None else (None, None)
        skipped = found.skip is not None and any(found.skip(c) for c in candidates)
        out[n.key] = {"becomes": new, "layer": layer,
                      "scanned": f"{scanned}[{index}]" if index is not None else None,
                      "left_out": n.left_out or ("optimizer state" if skipped else None)}
    return out


def describe_presets() -> list[str]:
    """One line per preset: its name and what it does."""
    width = max(map(len, PRESETS))
    return [f"{name.ljust(width)}  {p.description}" for name, p in sorted(PRESETS.items())]


__all__ = ["PRESETS", "Preset", "describe_presets", "get_preset", "preview"]

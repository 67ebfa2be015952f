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

from ...errors import MappingError
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


__all__ = ["PRESETS", "Preset", "get_preset"]

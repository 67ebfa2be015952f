"""Presets: named sets of renames for the usual framework-to-Flax naming differences.

A preset's rules run first (first match wins among them), then the user's ``rules``. A preset may also
name the Flax linen *collection* each tensor belongs in: when the target tree is a linen ``variables``
dict (it has a top-level ``params`` collection), every renamed checkpoint name ``n`` is also
addressable as ``<collection>/n``, so ``.../moving_mean`` reaches ``batch_stats/.../mean`` and
``.../kernel`` reaches ``params/.../kernel``.

The ``keras`` preset (Keras / tf.keras layer weights -> Flax linen and NNX):

=========================================  ==============================================
checkpoint                                 Flax
=========================================  ==============================================
``.../gamma``, ``.../beta``                ``.../scale``, ``.../bias``
``.../moving_mean``, ``.../moving_variance``  ``.../mean``, ``.../var`` (in ``batch_stats``)
``.../embeddings``                         ``.../embedding``
``.../attention_output/...`` (MHA)         ``.../out/...``
=========================================  ==============================================

Example::

    preset = get_preset("keras")
    rename("bn/moving_mean", preset.rules)      # 'bn/mean'
    preset.collection("bn/moving_mean")         # 'batch_stats'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from ..errors import MappingError
from .rules import Rule, compile_rules


@dataclasses.dataclass(frozen=True)
class Preset:
    """Renames applied before the user's rules, and the linen collection of an (original) name."""

    name: str
    rules: tuple[Rule, ...]
    collection: Callable[[str], str] | None = None


_KERAS_STATS = re.compile(r"(^|/)moving_(mean|variance)$")


def _keras_collection(name: str) -> str:
    return "batch_stats" if _KERAS_STATS.search(name) else "params"


KERAS = Preset(
    "keras",
    compile_rules([
        (r"(^|/)gamma$", r"\1scale"),
        (r"(^|/)beta$", r"\1bias"),
        (r"(^|/)moving_mean$", r"\1mean"),
        (r"(^|/)moving_variance$", r"\1var"),
        (r"(^|/)embeddings$", r"\1embedding"),
        (r"(^|/)attention_output(/|$)", r"\1out\2"),
    ]),
    _keras_collection,
)

PRESETS: dict[str, Preset] = {KERAS.name: KERAS}


def get_preset(preset: str | Preset | None) -> Preset | None:
    """The :class:`Preset` named ``preset`` (or ``preset`` itself); None for None."""
    if preset is None or isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise MappingError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[preset]

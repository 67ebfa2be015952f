"""The ``keras`` preset (Keras / tf.keras layer weights -> Flax linen and NNX):

=========================================  ==============================================
checkpoint                                 Flax
=========================================  ==============================================
``.../gamma``, ``.../beta``                ``.../scale``, ``.../bias``
``.../moving_mean``, ``.../moving_variance``  ``.../mean``, ``.../var`` (in ``batch_stats``)
``.../embeddings``                         ``.../embedding``
``.../attention_output/...`` (MHA)         ``.../out/...``
=========================================  ==============================================

The ``.../moving_mean`` of a linen target tree reaches ``batch_stats/.../mean`` and ``.../kernel``
reaches ``params/.../kernel`` (the collection alias).

Example::

    rename("bn/moving_mean", KERAS.rules)      # 'bn/mean'
    KERAS.collection("bn/moving_mean")         # 'batch_stats'
"""

from __future__ import annotations

import re

from ..rules import compile_rules
from .base import Preset


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
    description="Keras layer weights -> Flax (gamma/beta -> scale/bias, moving stats -> batch_stats, "
                "embeddings -> embedding)",
)

"""Default names for a conversion without a model: each checkpoint tensor's path in the output tree.

- TF1 (name-based) checkpoints: the tensor's name.
- TF2 (object-based) checkpoints: the variable's object path, the model-side one for variables an
  optimizer also tracks (``model/dense/kernel``, not ``optimizer/_trainable_variables/0``); or, with
  ``names="full"``, its ``full_name`` where that is unique (Keras 3: the layer path ``mha/query/kernel``
  rather than the object path ``model/_operations/1/_query_dense/_kernel``).

Left out unless ``include_optimizer``: the object graph, ``save_counter``, ``global_step``, Keras
metrics state (``metrics/.../vars/<n>``) and optimizer state (TF2 slot and optimizer variables; TF1
slots such as ``<var>/Adam``, ``<var>/Adam_1``, ``<var>/Momentum``, ``<var>/adam_m``, and
``beta1_power``; ``optimizer/...`` names).

Example::

    [(t.key, t.name, t.left_out) for t in default_names(ckpt)]
    # [('dense/kernel', 'dense/kernel', None), ('dense/kernel/Adam', 'dense/kernel/Adam', 'optimizer state')]
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

from .formats.object_graph import OBJECT_GRAPH_KEY, VALUE_SUFFIX
from .errors import MappingError

# TF1 optimizer slots are named '<var>/<OptimizerName>[_<n>]' (tf.compat.v1.train optimizers) or
# '<var>/adam_m|adam_v' (BERT's AdamWeightDecay, LAMB); Adam's step powers are 'beta1_power[_n]'.
_TF1_OPTIMIZER = re.compile(
    r"/(Adam|Adam_\d+|AdamW|AdamW_\d+|adam_[mv]|lamb_[mv]|Momentum|Adagrad|AdagradDA|AdagradDA_\d+|"
    r"RMSProp|RMSProp_\d+|Ftrl|Ftrl_\d+|Adadelta|Adadelta_\d+|ProximalAdagrad)$"
    r"|(^|/)beta[12]_power(_\d+)?$|(^|/)optimizer(/|$)", re.IGNORECASE)
# Keras files: compiled metrics' state (``metrics/mean/vars/0``) is not model state either.
_BOOKKEEPING = re.compile(r"(^|/)(global_step|save_counter)$|^metrics/.+/vars/\d+$")

OPTIMIZER = "optimizer state"
BOOKKEEPING = "bookkeeping"


@dataclasses.dataclass(frozen=True)
class DefaultName:
    """One checkpoint tensor: its key, its default output name, why it is left out (None: it is not)
    and, for TF2 variables, its other names (``full_name``, object path) for assignment maps."""

    key: str
    name: str
    left_out: str | None
    aliases: tuple[str, ...] = ()


NAME_KINDS = ("object", "full")


def default_names(ckpt: Any, include_optimizer: bool = False, names: str = "object") -> list[DefaultName]:
    """The default name of every tensor of ``ckpt``, in the checkpoint's (sorted) order.

    ``names``: ``"object"`` (TF2 variables by model-side object path) or ``"full"`` (by ``full_name``
    where no other variable has the same one, else by object path). TF1 tensors keep their names.

    Example::

        names = default_names(tf2flax.open_checkpoint(path), names="full")
        kept = [n.name for n in names if n.left_out is None]
    """
    if names not in NAME_KINDS:
        raise MappingError(f"unknown names {names!r}: expected one of {', '.join(NAME_KINDS)}")
    graph = ckpt.object_graph
    by_key = graph.by_key() if graph is not None else {}
    unique_full = _unique_full_names(by_key.values()) if names == "full" else set()
    out = []
    for key in ckpt.names:
        var = by_key.get(key)
        if var is not None:
            name = var.full_name if var.full_name in unique_full else var.model_path
            optimizer = var.is_optimizer
            aliases = tuple(dict.fromkeys(n for n in (var.full_name, var.model_path, var.object_path, key)
                                          if n and n != name))
        else:
            name = key[: -len(VALUE_SUFFIX)] if graph is not None and key.endswith(VALUE_SUFFIX) else key
            optimizer, aliases = False, ()
        reason = left_out_reason(key, name, optimizer)
        out.append(DefaultName(key, name, None if include_optimizer else reason, aliases))
    return out


def _unique_full_names(variables: Any) -> set[str]:
    counts = Counter(v.full_name for v in variables if v.full_name)
    return {name for name, n in counts.items() if n == 1}


def left_out_reason(key: str, name: str, optimizer: bool = False) -> str | None:
    """Why tensor ``key`` (default name ``name``) is not model state: bookkeeping, optimizer state, or None.

    Example::

        left_out_reason("bert/pooler/dense/kernel/adam_m", "bert/pooler/dense/kernel/adam_m")  # 'optimizer state'
    """
    if key == OBJECT_GRAPH_KEY or _BOOKKEEPING.search(name):
        return BOOKKEEPING
    if optimizer or _TF1_OPTIMIZER.search(name):
        return OPTIMIZER
    return None


def display_names(ckpt: Any, kind: str = "key") -> dict[str, str]:
    """``key -> name`` for ``ls --names``: ``key`` (the checkpoint key), ``object`` (the default, model-side
    object path) or ``full`` (a TF2 variable's TF1-style ``full_name``, e.g. ``sequential/dense/kernel``).

    TF1 checkpoints have one name per tensor, so every kind gives the key.
    """
    if kind not in ("key", "object", "full"):
        raise ValueError(f"unknown name kind {kind!r}: expected key, object or full")
    graph = ckpt.object_graph
    if kind == "key" or graph is None:
        return {k: k for k in ckpt.names}
    if kind == "object":
        return {n.key: n.name for n in default_names(ckpt, include_optimizer=True)}
    by_key = graph.by_key()
    return {k: by_key[k].full_name if k in by_key and by_key[k].full_name else k for k in ckpt.names}

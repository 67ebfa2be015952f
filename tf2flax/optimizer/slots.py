"""Optimizer slot families: which checkpoint tensors are which parameter's optimizer state.

Each family maps a parameter's checkpoint key to its slots by *role*: ``mu``/``nu`` (Adam's first and
second moments), ``trace`` (momentum accumulator, optax's ``TraceState``), ``velocity`` (Keras SGD's
momentum, which holds ``-learning_rate * trace``), ``vr``/``vc``/``v``/``m`` (Mesh-TF Adafactor).

=================  ================================================  ===================================
family             slots                                             step counter
=================  ================================================  ===================================
``tf1_adam``       ``<var>/Adam`` (mu), ``<var>/Adam_1`` (nu)        ``beta1_power`` = beta1^(t+1),
                                                                     ``global_step``
``bert_adam``      ``<var>/adam_m`` (mu), ``<var>/adam_v`` (nu)      ``global_step``
``tf1_momentum``   ``<var>/Momentum`` (trace)                        ``global_step``
``tf2_slots``      object graph ``slot_variables``: ``m``, ``v``,    ``optimizer/iter`` or
                   ``momentum`` (tf.keras OptimizerV2, TF1           ``optimizer/beta1_power``
                   optimizers under eager)
``keras2``         ``<Opt>/m/<var>``, ``<Opt>/v/<var>`` (tf_keras    ``optimizer/_iterations``
                   2.11+ optimizers)
``keras3``         ``<opt>/<var_path>_momentum``, ``_velocity``      ``optimizer/_iterations``
``mtf_adafactor``  ``<var>_slot_vr``, ``_slot_vc``, ``_slot_v``,     ``global_step``
                   ``_slot_m``
=================  ================================================  ===================================

Example::

    slots = find_slots(tf2flax.open_checkpoint("/runs/bert/model.ckpt-1000"))
    slots.family, slots.by_param["bert/pooler/dense/kernel"]   # 'bert_adam', {'mu': '.../adam_m', 'nu': ...}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Union

from ..formats.object_graph import OBJECT_GRAPH_KEY, VALUE_SUFFIX
from ..formats.protos import TrackableObjectGraph
from ..errors import MappingError

DESCRIPTIONS = {
    "tf1_adam": "TF1 AdamOptimizer (<var>/Adam, <var>/Adam_1, beta1_power)",
    "bert_adam": "BERT AdamWeightDecayOptimizer (<var>/adam_m, <var>/adam_v)",
    "tf1_momentum": "TF1 MomentumOptimizer (<var>/Momentum)",
    "tf2_slots": "TF2 object-graph slot variables (tf.keras OptimizerV2 or a TF1 optimizer under eager)",
    "keras2": "tf_keras optimizer (<Opt>/m/<var>, <Opt>/v/<var>, iterations)",
    "keras3": "Keras 3 optimizer (<opt>/<var>_momentum, <opt>/<var>_velocity, iterations)",
    "mtf_adafactor": "Mesh-TF Adafactor (<var>_slot_vr, <var>_slot_vc, <var>_slot_v)",
}

# name-based (TF1-style) families: (family, pattern on the checkpoint key, role of each suffix)
_TF1 = [
    ("tf1_adam", re.compile(r"^(.+)/(Adam|Adam_1)$"), {"Adam": "mu", "Adam_1": "nu"}),
    ("bert_adam", re.compile(r"^(.+)/(adam_m|adam_v)$"), {"adam_m": "mu", "adam_v": "nu"}),
    ("tf1_momentum", re.compile(r"^(.+)/(Momentum)$"), {"Momentum": "trace"}),
    ("mtf_adafactor", re.compile(r"^(.+)_slot_(vr|vc|v|m)$"), {"vr": "vr", "vc": "vc", "v": "v", "m": "m"}),
]
_PART = re.compile(r"^(.*)/part_(\d{1,9})$")  # (a longer number is no part index)
_KERAS3 = re.compile(r"^[^/]+/(.+)_(momentum|velocity)$")
_KERAS2 = re.compile(r"^[^/]+/(m|v)/(.+)$")


SlotKey = Union[str, tuple[str, ...]]


@dataclasses.dataclass
class Slots:
    """The slots of one family in a checkpoint.

    ``by_param``: parameter checkpoint key -> {role: slot key, or the keys of its parts in order when a
    partitioned variable saved whole has its slots saved per part (``<var>/part_<n>/adam_m``)}; ``counters``: ``step``,
    ``beta1_power``, ``beta2_power`` -> checkpoint key, where present; ``learning_rate``: the key of
    a stored learning rate (Keras), if any.
    """

    family: str
    by_param: dict[str, dict[str, SlotKey]]
    counters: dict[str, str] = dataclasses.field(default_factory=dict)
    learning_rate: str | None = None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.family]

    @property
    def roles(self) -> set[str]:
        return {r for slots in self.by_param.values() for r in slots}

    def slot_keys(self) -> set[str]:
        return {k for slots in self.by_param.values() for key in slots.values()
                for k in ((key,) if isinstance(key, str) else key)}


def find_slots(ckpt: Any, family: str | None = None) -> Slots:
    """The optimizer slots of ``ckpt``; ``family`` picks one when several are present.

    Raises :class:`MappingError` when the checkpoint has no optimizer slots, or several families
    and no ``family`` to choose.
    """
    if family is not None and family not in DESCRIPTIONS:
        raise MappingError(f"unknown optimizer slot family {family!r}; known: {', '.join(DESCRIPTIONS)}")
    found = {s.family: s for s in (*_tf1_families(ckpt), *_tf2_families(ckpt)) if s.by_param}
    where = getattr(ckpt, "path", "<checkpoint>")
    if family is not None:
        if family not in found:
            have = ", ".join(found) or "none"
            raise MappingError(f"checkpoint {where} has no {DESCRIPTIONS[family]} slots (families found: {have})")
        return found[family]
    if not found:
        raise MappingError(f"checkpoint {where} holds no optimizer slots of a known family "
                           f"({'; '.join(DESCRIPTIONS.values())})")
    if len(found) > 1:
        raise MappingError(f"checkpoint {where} holds slots of several optimizers: "
                           f"{', '.join(f'{k} ({DESCRIPTIONS[k]})' for k in found)}; pick one with family=...")
    return next(iter(found.values()))


def _tf1_families(ckpt: Any) -> list[Slots]:
    names = set(ckpt.names)
    out = []
    for family, pattern, roles in _TF1:
        by_param: dict[str, dict[str, SlotKey]] = {}
        parts: dict[str, dict[str, dict[int, str]]] = {}
        for key in sorted(names):
            m = pattern.match(key)
            if not m:
                continue
            if m.group(1) in names:
                by_param.setdefault(m.group(1), {})[roles[m.group(2)]] = key
                continue
            part = _PART.match(m.group(1))
            if part and part.group(1) in names:  # a partitioned variable saved whole, its slots per part (BERT)
                parts.setdefault(part.group(1), {}).setdefault(roles[m.group(2)], {})[int(part.group(2))] = key
        for var, by_role in parts.items():
            for role, found in by_role.items():
                if sorted(found) == list(range(len(found))) and role not in by_param.get(var, {}):
                    by_param.setdefault(var, {})[role] = tuple(found[i] for i in range(len(found)))
        counters = {}
        if "global_step" in names:
            counters["step"] = "global_step"
        if family == "tf1_adam":
            counters.update({p: p for p in ("beta1_power", "beta2_power") if p in names})
        out.append(Slots(family, by_param, counters))
    return out


def _graph(ckpt: Any) -> Any | None:
    if OBJECT_GRAPH_KEY not in ckpt.names:
        return None
    graph = TrackableObjectGraph()
    graph.ParseFromString(ckpt.read(OBJECT_GRAPH_KEY).item())
    return graph


def _value_key(node: Any) -> str | None:
    return next((a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"), None)


def _tf2_families(ckpt: Any) -> list[Slots]:
    if ckpt.object_graph is None:
        return []
    return [_graph_slots(ckpt), _named_slots(ckpt, "keras3", _KERAS3, _keras3_role, lambda n: n.replace("/", "_")),
            _named_slots(ckpt, "keras2", _KERAS2, _keras2_role, lambda n: n)]


def _graph_slots(ckpt: Any) -> Slots:
    """``slot_variables`` of the optimizer nodes (tf.keras OptimizerV2, TF1 optimizers in eager)."""
    graph = _graph(ckpt)
    by_param: dict[str, dict[str, str]] = {}
    counters: dict[str, str] = {}
    learning_rate = None
    keras = False
    for node in graph.nodes:
        if not node.slot_variables:
            continue
        children = {c.local_name: _value_key(graph.nodes[c.node_id]) for c in node.children
                    if 0 <= c.node_id < len(graph.nodes)}
        keras = keras or "iter" in children
        for name, counter in (("iter", "step"), ("beta1_power", "beta1_power"), ("beta2_power", "beta2_power")):
            if children.get(name):
                counters[counter] = children[name]
        learning_rate = learning_rate or children.get("learning_rate")
        for ref in node.slot_variables:
            ids = (ref.original_variable_node_id, ref.slot_variable_node_id)
            if not all(0 <= i < len(graph.nodes) for i in ids):
                continue
            param, slot = (_value_key(graph.nodes[i]) for i in ids)
            if param and slot:
                by_param.setdefault(param, {})[ref.slot_name] = slot
    roles = {"m": "mu", "v": "nu", "momentum": "velocity" if keras else "trace"}
    by_param = {p: {roles[n]: k for n, k in s.items() if n in roles} for p, s in by_param.items()}
    return Slots("tf2_slots", {p: s for p, s in by_param.items() if s}, counters, learning_rate)


def _keras3_role(suffix: str, has_nu: bool) -> str:
    return {"velocity": "nu", "momentum": "mu" if has_nu else "velocity"}[suffix]


def _keras2_role(suffix: str, has_nu: bool) -> str:
    return {"v": "nu", "m": "mu" if has_nu else "velocity"}[suffix]


def _named_slots(ckpt: Any, family: str, pattern: re.Pattern, role: Callable[[str, bool], str],
                 flat: Callable[[str], str]) -> Slots:
    """Keras optimizer variables named after their parameter (``optimizer/_variables/N``)."""
    variables = ckpt.object_graph.variables
    params = {flat(v.full_name): v.key for v in variables if not v.is_optimizer and v.full_name}
    found: dict[str, dict[str, str]] = {}
    counters, learning_rate = {}, None
    for v in variables:
        if not v.is_optimizer:
            continue
        if v.object_path.endswith("/_iterations"):
            counters["step"] = v.key
        elif v.object_path.endswith("/_learning_rate"):
            learning_rate = v.key
        m = pattern.match(v.full_name or "")
        if m is None:
            continue
        name, suffix = (m.group(1), m.group(2)) if family == "keras3" else (m.group(2), m.group(1))
        if name in params:
            found.setdefault(params[name], {})[suffix] = v.key
    has_nu = any(("velocity" if family == "keras3" else "v") in s for s in found.values())
    by_param = {p: {role(suffix, has_nu): key for suffix, key in s.items()} for p, s in found.items()}
    return Slots(family, by_param, counters if by_param else {}, learning_rate)


def strip_value_suffix(key: str) -> str:
    """A TF2 key without ``/.ATTRIBUTES/VARIABLE_VALUE``, for messages."""
    return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key

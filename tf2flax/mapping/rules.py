"""Ordered regex renames of checkpoint names (the T5X translator model).

A rule is ``(pattern, replacement)``: the first rule whose pattern is found in a name (``re.search``)
rewrites it with ``re.sub`` (replacement: a template such as ``r'\\1/scale'`` or a function of the
match); later rules are not tried. A replacement of ``None`` drops the name: the tensor is not
addressable by it and is never reported as unused. Names no rule matches are kept as they are.
String patterns run on RE2, in time linear in the name (see ``tf2flax.patterns``).

``{i}`` in a pattern matches a decimal layer index (a regex group named ``i``). With ``{i}`` in the
replacement too, the rule renames layer by layer (``block_007`` -> ``layers_7``); without, it is a
*stacking* rule: the layers' tensors are gathered under the one renamed name, which loads a leaf with a
layer axis (see ``stacking.py``).

Example::

    rules = compile_rules([(r"^sequential/", ""), (r"/adam_[mv]$", None)])
    rename("sequential/dense/kernel", rules)     # 'dense/kernel'
    rename("dense/kernel/adam_m", rules)         # None (dropped)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Iterable, Mapping, Union

from ..errors import MappingError, clip, short_repr
from ..patterns import SUB_ERRORS, compile_pattern

Replacement = Union[str, Callable[[Any], str], None]
RulesSpec = Union[Mapping[str, Replacement], Iterable[tuple[Union[str, re.Pattern], Replacement]]]


LAYER = "{i}"
# Significant digits a layer or part index may have: no model has a billion layers, and Python's int()
# refuses strings of over 4300 digits with a ValueError.
MAX_INDEX_DIGITS = 9


@dataclasses.dataclass(frozen=True)
class Rule:
    """One compiled rename; ``stack``: a stacking rule (``{i}`` in the pattern only)."""

    pattern: Any  # an RE2 pattern, or the re.Pattern given
    replacement: Replacement
    stack: bool = False


def compile_rules(rules: RulesSpec | None) -> tuple[Rule, ...]:
    """Validate and compile ``rules`` (a dict or a sequence of ``(pattern, replacement)`` pairs)."""
    if rules is None:
        return ()
    if not isinstance(rules, (Mapping, list, tuple)):
        raise MappingError(f"rules must be a list of (pattern, replacement) pairs or a mapping, got {short_repr(rules)}")
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise MappingError(f"rule #{i} must be a (pattern, replacement) pair, got {item!r}")
        pattern, repl = item
        if not (repl is None or isinstance(repl, str) or callable(repl)):
            raise MappingError(f"rule #{i} ({pattern!r}): the replacement must be a string, a function "
                               f"of the match or None, got {type(repl).__name__}")
        layered = isinstance(pattern, str) and LAYER in pattern
        if layered:
            if pattern.count(LAYER) != 1:
                raise MappingError(f"rule #{i}: {pattern!r} must contain '{LAYER}' at most once")
            pattern = pattern.replace(LAYER, r"(?P<i>\d+)")
        compiled = compile_pattern(pattern, f"rule #{i}")
        if layered and isinstance(repl, str) and LAYER in repl:
            out.append(Rule(compiled, functools.partial(_per_layer, repl)))
        else:
            out.append(Rule(compiled, repl, stack=layered and repl is not None))
    return tuple(out)


def layer_index(text: str, name: str) -> int:
    """The decimal layer (or part) index ``text`` found in tensor ``name``, as an int; an index of more than
    ``MAX_INDEX_DIGITS`` significant digits is a MappingError naming the tensor.

    Example::

        layer_index("007", "enc/block_007/w")      # 7
    """
    significant = text.lstrip("0")
    if len(significant) > MAX_INDEX_DIGITS:
        raise MappingError(f"tensor {clip(name)}: layer index {clip(text, 20)} has {len(text)} digits; a layer "
                           f"index has at most {MAX_INDEX_DIGITS}")
    return int(significant or "0")


def _per_layer(template: str, m: Any) -> str:
    """``template`` expanded for match ``m``, its ``{i}`` the layer index without leading zeros."""
    return m.expand(template.replace(LAYER, "\x00")).replace("\x00", str(layer_index(m.group("i"), m.string)))


def rename(name: str, rules: Iterable[Rule]) -> str | None:
    """``name`` rewritten by the first matching rule; None if that rule drops it."""
    return rename_layer(name, rules)[0]


def rename_layer(name: str, rules: Iterable[Rule]) -> tuple[str | None, int | None]:
    """``(new name, layer index)``: the index is set when a stacking rule renamed ``name``.

    Example::

        rename_layer("enc/layer_3/w", compile_rules([("enc/layer_{i}/", "params/layers/")]))
        # ('params/layers/w', 3)
    """
    for rule in rules:
        m = rule.pattern.search(name)
        if m:
            if rule.replacement is None:
                return None, None
            try:
                new = rule.pattern.sub(rule.replacement, name, count=1 if rule.stack else 0)
            except SUB_ERRORS as e:
                raise MappingError(f"rule {rule.pattern.pattern!r} -> {rule.replacement!r} "
                                   f"fails on {name!r}: {e}") from None
            return new, layer_index(m.group("i"), name) if rule.stack else None
    return name, None

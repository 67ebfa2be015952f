"""Ordered regex renames of checkpoint names (the T5X translator model).

A rule is ``(pattern, replacement)``: the first rule whose pattern is found in a name (``re.search``)
rewrites it with ``re.sub`` (replacement: a template such as ``r'\\1/scale'`` or a function of the
match); later rules are not tried. A replacement of ``None`` drops the name: the tensor is not
addressable by it and is never reported as unused. Names no rule matches are kept as they are.
String patterns run on RE2, in time linear in the name (see ``tf2flax.patterns``).

Example::

    rules = compile_rules([(r"^sequential/", ""), (r"/adam_[mv]$", None)])
    rename("sequential/dense/kernel", rules)     # 'dense/kernel'
    rename("dense/kernel/adam_m", rules)         # None (dropped)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Union

from ..errors import MappingError
from ..patterns import SUB_ERRORS, compile_pattern

Replacement = Union[str, Callable[[Any], str], None]
RulesSpec = Union[Mapping[str, Replacement], Iterable[tuple[Union[str, re.Pattern], Replacement]]]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One compiled rename."""

    pattern: Any  # an RE2 pattern, or the re.Pattern given
    replacement: Replacement


def compile_rules(rules: RulesSpec | None) -> tuple[Rule, ...]:
    """Validate and compile ``rules`` (a dict or a sequence of ``(pattern, replacement)`` pairs)."""
    if rules is None:
        return ()
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise MappingError(f"rule #{i} must be a (pattern, replacement) pair, got {item!r}")
        pattern, repl = item
        if not (repl is None or isinstance(repl, str) or callable(repl)):
            raise MappingError(f"rule #{i} ({pattern!r}): the replacement must be a string, a function "
                               f"of the match or None, got {type(repl).__name__}")
        out.append(Rule(compile_pattern(pattern, f"rule #{i}"), repl))
    return tuple(out)


def rename(name: str, rules: Iterable[Rule]) -> str | None:
    """``name`` rewritten by the first matching rule; None if that rule drops it."""
    for rule in rules:
        if rule.pattern.search(name):
            if rule.replacement is None:
                return None
            try:
                return rule.pattern.sub(rule.replacement, name)
            except SUB_ERRORS as e:
                raise MappingError(f"rule {rule.pattern.pattern!r} -> {rule.replacement!r} "
                                   f"fails on {name!r}: {e}") from None
    return name

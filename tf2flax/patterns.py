"""User regular expressions (rename rules, transform keys, sharding rules), compiled with RE2.

RE2 matches in time linear in the name, so a rule such as ``^(a+)+$`` from a map file cannot hang on
a long tensor name, as Python's backtracking ``re`` does. It reads Python's syntax except lookaround
and backreferences, and its ``\\w``, ``\\d``, ``\\s``, ``\\b`` are ASCII-only. A compiled
``re.Pattern`` passed from Python is used as it is (Python's ``re``: the caller's choice).

Example::

    pattern = compile_pattern(r"^(.*)/kernel$", "rule #0")
    pattern.sub(r"\\1/w", "dense/kernel")    # 'dense/w'
"""

from __future__ import annotations

import re
from typing import Any

import re2

from .errors import MappingError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error comes back as an exception; RE2 need not also log it

# What a bad replacement template raises from ``sub``, in either engine.
SUB_ERRORS = (re.error, re2.error, IndexError)


def compile_pattern(pattern: Any, what: str) -> Any:
    """``pattern`` (a string) compiled with RE2, or a ``re.Pattern`` as given; MappingError naming ``what``.

    The result has ``search``, ``fullmatch``, ``sub`` and ``pattern`` as ``re.Pattern`` has.
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise MappingError(f"{what}: {pattern!r} is not a regular expression (a string)")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise MappingError(f"{what}: {pattern!r} is not a valid regular expression for RE2 ({reason}); "
                           "lookaround and backreferences need Python's re: pass re.compile(...) from "
                           "Python") from None

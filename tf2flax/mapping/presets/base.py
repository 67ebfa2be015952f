"""The :class:`Preset` record every preset module fills in.

Example::

    Preset("mine", compile_rules([(r"/gamma$", "/scale")]), description="gamma -> scale")
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from ..rules import Rule
from ..stacking import StackAxis


@dataclasses.dataclass(frozen=True)
class Preset:
    """Renames applied before the user's rules, and what else a family needs (see the package doc).

    ``rules``: static renames; ``dynamic``: a function of the checkpoint's names giving rules that run
    before ``rules``; ``collection``: original name -> linen collection; ``scan``: stacking rules adding
    scanned names, stacked along ``stack_axis``; ``fit``: reshape tensors to their target's shape across
    split/merged adjacent axes; ``skip``: original names that are optimizer state.
    """

    name: str
    rules: tuple[Rule, ...]
    collection: Callable[[str], str] | None = None
    description: str = ""
    dynamic: Callable[[Sequence[str]], tuple[Rule, ...]] | None = None
    scan: tuple[Rule, ...] = ()
    stack_axis: StackAxis = None
    fit: bool = False
    skip: Callable[[str], bool] | None = None

    def rules_for(self, names: Sequence[str]) -> tuple[Rule, ...]:
        """The rules for a checkpoint with tensors ``names``: the dynamic ones, then the static ones."""
        return (self.dynamic(names) if self.dynamic else ()) + self.rules

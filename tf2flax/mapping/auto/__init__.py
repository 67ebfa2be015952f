"""``mapping="auto"``: infer the assignment map from names, shapes, structure and order; never guess.

See docs/automap.md. ``infer_mapping`` returns an :class:`AutoMapping` (decisions with evidence and
confidence, undecided targets, unused checkpoint layers); ``build_plan`` calls it for
``mapping="auto"`` or an :class:`AutoMap` with hints, refuses when anything is undecided, and loads
the inferred map like any other.

Example::

    auto = infer_mapping(ckpt, flatten_targets(nnx.state(model)))
    print(auto.summary())
"""

from .infer import MARGIN, AutoMap, as_auto, infer_mapping
from .report import AutoMapping, Decision, Undecided

__all__ = ["MARGIN", "AutoMap", "AutoMapping", "Decision", "Undecided", "as_auto", "infer_mapping"]

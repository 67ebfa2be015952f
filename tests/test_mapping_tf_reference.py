"""Differential tests: TensorFlow's ``init_from_checkpoint`` vs ``tf2flax.init_params`` on the same maps.

Each case builds a TF1 graph, runs TensorFlow's real ``init_from_checkpoint`` and the initializers,
then loads the same checkpoint with the same map into a Flax-style tree mirroring the graph's
variables. Both must load the same values, or both must fail (ours with a ``ValueError`` subclass).
One deliberate divergence: a scope entry whose tensor has the wrong shape is an error here, while
TensorFlow silently gives the variable the checkpoint tensor's shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from tf2flax.errors import MappingError
from tf2flax.restore import init_params
from tf_reference_mapping import (Parts, Var, VarSpec, flat, resolve_markers, run_tf, target_tree,
                                  write_reference_checkpoint)

SEED_VARS = {
    "new_scope_1/var1": VarSpec((20, 2)),
    "new_scope_2/var2": VarSpec((50, 4)),
    "new_scope_2/var3": VarSpec((100, 100), parts=5),
}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    variables: dict[str, VarSpec]
    mapping: Any
    error: bool = False
    tf_corrupts: bool = False  # TensorFlow does not fail but gives a variable the checkpoint's shape


CASES = [
    # The seed page's example, entry by entry.
    Case("seed-scope", SEED_VARS, {"old_scope_1/": "new_scope_1/"}),
    Case("seed-names", SEED_VARS, {"old_scope_1/var1": "new_scope_1/var1", "old_scope_1/var2": "new_scope_2/var2"}),
    Case("seed-objects", SEED_VARS, {"old_scope_1/var1": Var("new_scope_1/var1"),
                                     "old_scope_1/var2": Var("new_scope_2/var2")}),
    Case("seed-partitioned-by-name", SEED_VARS, {"old_scope_2/var3": "new_scope_2/var3"}),
    Case("seed-partitioned-by-list", SEED_VARS, {"old_scope_2/var3": Parts("new_scope_2/var3")}),
    Case("seed-all", SEED_VARS, {"old_scope_1/": "new_scope_1/", "old_scope_1/var2": "new_scope_2/var2",
                                 "old_scope_2/var3": "new_scope_2/var3"}),
    # Partition counts and axes that differ from the checkpoint's.
    Case("partitions-3-uneven", {"v": VarSpec((100, 100), parts=3)}, {"old_scope_2/var3": "v"}),
    Case("partitions-axis-1", {"v": VarSpec((100, 100), parts=4, axis=1)}, {"old_scope_2/var3": "v"}),
    Case("saved-3-loaded-2", {"v": VarSpec((10, 6), parts=2)}, {"old_scope_2/var4": "v"}),
    Case("saved-3-loaded-whole", {"v": VarSpec((10, 6))}, {"old_scope_2/var4": "v"}),
    Case("some-parts-by-list", {"v": VarSpec((10, 6), parts=4)}, {"old_scope_2/var4": Parts("v", (1, 3))}),
    Case("partitioned-in-scope", {"s/var3": VarSpec((100, 100), parts=6), "s/var4": VarSpec((10, 6), parts=2)},
         {"old_scope_2/": "s/"}),
    Case("partitioned-var-as-scope", {"s/var3": VarSpec((100, 100), parts=2)}, {"old_scope_2/var3/": "s/var3/"}),
    # The root.
    Case("root-into-scope", {"new_root/root_w": VarSpec((4,)), "new_root/useful_scope/w": VarSpec((3,)),
                             "other/root_w": VarSpec((4,))}, {"/": "new_root/"}),
    Case("root-to-root", {"root_w": VarSpec((4,)), "old_scope_1/var1": VarSpec((20, 2))}, {"/": "/"}),
    Case("scope-to-root", {"var1": VarSpec((20, 2)), "var2": VarSpec((50, 4))}, {"old_scope_1/": "/"}),
    # One tensor into two targets (list form), and the later entry winning.
    Case("one-into-two", {"a/var1": VarSpec((20, 2)), "b/var1": VarSpec((20, 2))},
         [("old_scope_1/var1", "a/var1"), ("old_scope_1/var1", "b/var1")]),
    Case("later-entry-wins", {"t/w": VarSpec((3,))}, [("useful_scope_1/w", "t/w"), ("useful_scope/w", "t/w")]),
    # Scope boundaries.
    Case("scope-boundary", {"useful_scope/w": VarSpec((3,)), "useful_scope/sub/b": VarSpec((2,)),
                            "useful_scope_1/w": VarSpec((3,))}, {"useful_scope/": "useful_scope/"}),
    Case("scope-boundary-ckpt-side", {"x/w": VarSpec((3,))}, {"useful_scope_1/": "x/"}),
    Case("target-not-var-read-as-scope", {"new_scope_1/var1": VarSpec((20, 2))},
         {"old_scope_1/": "new_scope_1/var9"}),
    Case("empty-scope-does-nothing", SEED_VARS, {"old_scope_1/": "no_such_scope/"}),
    # Mistakes.
    Case("missing-tensor", SEED_VARS, {"old_scope_1/var9": "new_scope_1/var1"}, error=True),
    Case("missing-tensor-in-scope", {"new_scope_1/var1": VarSpec((20, 2)), "new_scope_1/var9": VarSpec((2,))},
         {"old_scope_1/": "new_scope_1/"}, error=True),
    Case("shape-mismatch", SEED_VARS, {"old_scope_1/var2": "new_scope_1/var1"}, error=True),
    Case("shape-mismatch-object", SEED_VARS, {"old_scope_1/var2": Var("new_scope_1/var1")}, error=True),
    Case("shape-mismatch-in-scope", {"new_scope_1/var1": VarSpec((2, 20))}, {"old_scope_1/": "new_scope_1/"},
         error=True, tf_corrupts=True),
    Case("size-mismatch-in-scope", {"new_scope_1/var1": VarSpec((20, 3))}, {"old_scope_1/": "new_scope_1/"},
         error=True, tf_corrupts=True),
    Case("shape-mismatch-partitioned", {"v": VarSpec((90, 100), parts=3)}, {"old_scope_2/var3": "v"}, error=True),
    Case("variable-into-scope", SEED_VARS, {"old_scope_1/var1": "new_scope_1/"}, error=True),
    Case("typo-in-target", SEED_VARS, {"old_scope_1/var1": "new_scope_1/varl"}, error=True),
    Case("scope-into-variable", SEED_VARS, {"old_scope_1/": "new_scope_1/var1"}, error=True),
    Case("slices-of-two-variables", {"a": VarSpec((10, 6), parts=2), "b": VarSpec((10, 6), parts=2)},
         {"old_scope_2/var4": [Parts("a", (0,)), Parts("b", (1,))]}, error=True),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    prefix, _ = write_reference_checkpoint(tmp_path_factory.mktemp("reference"))
    return prefix


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_as_tensorflow(reference: str, case: Case) -> None:
    tf_result = run_tf(reference, case.variables, case.mapping)
    tree = target_tree(tf_result.shapes)
    ours_map = resolve_markers(case.mapping, tree, tf_result.shapes)

    if case.error:
        if case.tf_corrupts:  # a divergence: TF's scope entries skip the shape check (restore_v2 reshapes)
            assert any(tf_result.values[n].shape != s for n, s in tf_result.shapes.items())
        else:
            assert tf_result.error is not None, "TensorFlow was expected to fail"
        with pytest.raises(MappingError) as info:
            init_params(reference, ours_map, tree)
        assert isinstance(info.value, ValueError)
        return
    assert tf_result.error is None, f"TensorFlow failed: {tf_result.error}"
    loaded = flat(init_params(reference, ours_map, tree))
    assert sorted(loaded) == sorted(tf_result.values)
    for name, want in tf_result.values.items():
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


def test_seed_values_exact(reference: str) -> None:
    """Spot-check the seed example against the checkpoint values themselves, not only TensorFlow."""
    from tf_reference_mapping import reference_values

    values = reference_values()
    shapes = {"new_scope_1/var1": (20, 2), **{f"new_scope_2/var3/part_{i}": (20, 100) for i in range(5)}}
    tree = target_tree(shapes)
    loaded = flat(init_params(reference, {"old_scope_1/": "new_scope_1/", "old_scope_2/var3": "new_scope_2/var3"},
                              tree))
    np.testing.assert_array_equal(loaded["new_scope_1/var1"], values["old_scope_1/var1"])
    for i in range(5):
        np.testing.assert_array_equal(loaded[f"new_scope_2/var3/part_{i}"],
                                      values["old_scope_2/var3"][20 * i: 20 * (i + 1)])

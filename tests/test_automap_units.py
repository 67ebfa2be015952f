"""The pieces of ``mapping="auto"`` on their own: tokens, shape fits, order alignment, the matching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tf2flax.mapping.auto.candidates import forced_alignment, local_tokens, reshape_ok
from tf2flax.mapping.auto.match import UNMATCHED, assign_with_margins, best_assignment, total
from tf2flax.mapping.auto.tokens import leaf_kind, name_tokens, split_leaf, template


def test_vocabularies():
    assert {leaf_kind(n) for n in ("kernel", "_kernel", "weight", "w", "depthwise_kernel")} == {"kernel"}
    assert {leaf_kind(n) for n in ("bias", "b", "beta", "offset")} == {"bias"}
    assert leaf_kind("gamma") == leaf_kind("scale") == "scale"
    assert leaf_kind("moving_mean") == "mean" and leaf_kind("moving_variance") == "var"
    assert split_leaf("word_embeddings") == ("word", "embedding") and split_leaf("kernel") is None
    assert name_tokens("encoder/layers/0/attn/q") == name_tokens("encoder/layer_7/attention/self/query") \
        == {"encoder", "layer", "attention", "query"}
    assert name_tokens("model/mha/_output_dense") == {"attention", "out"}
    assert name_tokens("bert/embeddings/LayerNorm") == {"bert", "embedding", "norm"}
    assert name_tokens("encoder/layer_with_weights-4/_intermediate_dense") == {"encoder", "mlp", "dense"}


def test_templates_and_local_words():
    assert template("blocks/1/conv2") == ("blocks/#/conv#", (1, 2))
    assert template("conv2d_3") == ("conv2d_#", (3,))          # conv2d's digit is part of the word
    assert template("layer_with_weights-12/kernel") == ("layer_with_weights-#/kernel", (12,))
    assert local_tokens("bert/encoder/layer_3/attention/output/LayerNorm") == {"attention", "out", "norm"}
    assert local_tokens("batch_normalization_1") == local_tokens("batch_normalization") == {"norm"}


@pytest.mark.parametrize("src, dst, ok", [
    ((32, 32), (32, 2, 16), True),            # query kernel -> per head
    ((32, 32), (2, 16, 32), True),            # output kernel -> per head
    ((32,), (2, 16), True),
    ((3, 3, 4, 1), (3, 3, 1, 4), True),       # depthwise, multiplier 1
    ((3, 3, 4, 2), (3, 3, 1, 8), True),       # depthwise, multiplier 2
    ((64, 32), (32, 64), False),              # that would be a transpose
    ((4, 6), (6, 4), False),
    ((2, 3, 4), (4, 3, 2), False),
    ((6,), (7,), False),
])
def test_reshape_fits(src, dst, ok):
    assert reshape_ok(src, dst) is ok


def test_forced_alignment():
    assert forced_alignment([[True, False, False], [False, True, True]]) == [(0, 0)]
    assert forced_alignment([[True, True], [True, True]]) == [(0, 0), (1, 1)]
    assert forced_alignment([[True, True, True], [True, True, True]]) == []      # 3 sources, 2 targets
    assert forced_alignment([[False, True], [True, False]]) == []                # crossed: no order
    # row 1 could take column 3 alone, but not after row 2 took column 2: the order pairs all three
    assert forced_alignment([[True, False, False, False], [False, True, False, True], [False, False, True, False]]) \
        == [(0, 0), (1, 1), (2, 2)]
    # a checkpoint layer in between (a head the target lacks) does not spoil the rest
    assert forced_alignment([[True, True, False], [False, False, True]]) == [(1, 2)]


def brute_force(scores):
    n, m = scores.shape
    best = -np.inf
    for cols in itertools.product([None, *range(m)], repeat=n):
        used = [c for c in cols if c is not None]
        if len(used) != len(set(used)) or any(c is not None and not np.isfinite(scores[i, c])
                                               for i, c in enumerate(cols)):
            continue
        best = max(best, total(scores, list(cols)))
    return best


def test_best_assignment_is_optimal():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        scores = rng.random((n, m))
        scores[rng.random((n, m)) < 0.3] = -np.inf
        assert total(scores, best_assignment(scores)) == pytest.approx(brute_force(scores))


def test_margins_are_the_drop_when_a_pair_is_forbidden():
    rng = np.random.default_rng(1)
    for _ in range(150):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        scores = np.round(rng.random((n, m)), 2)
        scores[rng.random((n, m)) < 0.3] = -np.inf
        rows, drops = assign_with_margins(scores)
        best = total(scores, rows)
        for i, c in enumerate(rows):
            if c is None:
                assert drops[i] == float("inf")
                continue
            forbidden = scores.copy()
            forbidden[i, c] = -np.inf
            assert drops[i] == pytest.approx(best - brute_force(forbidden), abs=1e-6)


def test_margins_refuse_ties():
    assert assign_with_margins(np.array([[0.5, 0.5], [0.5, 0.5]]))[1] == [0.0, 0.0]
    assert assign_with_margins(np.array([[1.0, 0.0], [0.0, 1.0]]))[1] == pytest.approx([2.0, 2.0])
    only = assign_with_margins(np.array([[0.1, -np.inf], [-np.inf, 0.0]]))[1]
    assert min(only) >= UNMATCHED      # the only candidate: forbidding it leaves the target unmatched


def test_pruned_columns_keep_the_answer():
    """Only each row's n + 1 best columns take part; answers and margins do not change."""
    rng = np.random.default_rng(2)
    for _ in range(60):
        n, m = int(rng.integers(1, 4)), int(rng.integers(5, 9))
        scores = np.round(rng.random((n, m)), 2)
        scores[rng.random((n, m)) < 0.2] = -np.inf
        rows, drops = assign_with_margins(scores)
        assert total(scores, rows) == pytest.approx(brute_force(scores))
        for i, c in enumerate(rows):
            if c is not None:
                forbidden = scores.copy()
                forbidden[i, c] = -np.inf
                assert drops[i] == pytest.approx(total(scores, rows) - brute_force(forbidden), abs=1e-6)


def test_many_same_shape_checkpoint_layers_stay_fast():
    """6000 interchangeable checkpoint layers and 50 targets: refused (nothing tells them apart), quickly."""
    import time

    import jax

    from tf2flax.mapping.auto import infer_mapping
    from tf2flax.targets import flatten_targets

    class Fake:
        path, object_graph = "fake", None

        def __init__(self, shapes):
            self.shapes, self.names = shapes, sorted(shapes)

        def shape(self, key):
            return self.shapes[key]

        def dtype(self, key):
            return np.dtype("float32")

    ckpt = Fake({f"scope_{i % 97}/var_{i}/kernel": (4, 4) for i in range(6000)})
    targets = flatten_targets({"layers": {str(i): {"kernel": jax.ShapeDtypeStruct((4, 4), np.float32)}
                                          for i in range(50)}})
    start = time.perf_counter()
    auto = infer_mapping(ckpt, targets)
    assert len(auto.undecided) == 50 and not auto.decisions
    assert time.perf_counter() - start < 60   # ~3 s on a busy 2-core machine

"""Region-aware reshapes: a device region that splits or merges adjacent axes reads one source box;
any other region makes the entry read the whole tensor once (``stats.full_reads`` says which)."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
from family_writers import seeded, write_tf1_variables
from mapping_fakes import FakeCheckpoint
from tf2flax.plan import PlanEntry, Reshape, TensorSource, axis_groups


def all_regions(shape):
    spans = [[(i, j) for i in range(d) for j in range(i + 1, d + 1)] for d in shape]
    return [tuple(slice(i, j) for i, j in r) for r in itertools.product(*spans)]


@pytest.mark.parametrize("src,dst", [((8, 6), (8, 2, 3)), ((2, 3, 8), (6, 8)), ((4, 6), (6, 4)), ((2, 3, 4), (24,)),
                                     ((24,), (2, 3, 4)), ((1, 6, 1), (6,)), ((6, 4), (2, 3, 2, 2))])
def test_every_region_has_the_right_values_and_mapped_ones_read_only_their_box(src, dst):
    value = seeded(src, 0)
    ckpt = FakeCheckpoint({"w": value})
    entry = PlanEntry("t", TensorSource(ckpt, "w"), (Reshape(dst, src),))
    mapped = 0
    for region in all_regions(dst):
        ckpt.reads.clear()
        np.testing.assert_array_equal(entry.read(region), value.reshape(dst)[region])
        if entry.reads_regions([region]):
            mapped += 1
            (name, index), = ckpt.reads
            assert np.prod([s.stop - s.start for s in index]) == np.prod([s.stop - s.start for s in region])
        else:
            assert ckpt.reads == [("w", tuple(slice(0, d) for d in src))]
    assert mapped > 0


def test_axis_groups():
    assert axis_groups((6, 4), (2, 3, 4)) == [(range(0, 1), range(0, 2)), (range(1, 2), range(2, 3))]
    assert axis_groups((4, 6), (6, 4)) == [(range(0, 2), range(0, 2))]
    assert axis_groups((4, 6), (5, 5)) is None and axis_groups((0, 2), (2, 0)) is None


def test_outermost_axis_of_a_group_may_be_partial_only():
    entry = PlanEntry("t", TensorSource(FakeCheckpoint({"w": seeded((8, 6), 1)}), "w"), (Reshape((8, 2, 3), (8, 6)),))
    assert entry.reads_regions([(slice(0, 4), slice(1, 2), slice(0, 3))])      # one head: rows 0..3, cols 3..5
    assert entry.reads_regions([(slice(0, 8), slice(1, 2), slice(1, 2))])      # one feature of one head
    assert not entry.reads_regions([(slice(0, 8), slice(0, 2), slice(1, 2))])  # a feature of every head


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    value = seeded((16, 32), 3)
    return write_tf1_variables(tmp_path_factory.mktemp("reshape"), {"attention/query/kernel": value}), value


@pytest.mark.parametrize("spec,whole", [(P(None, "x", None), 0), (P("x", None, None), 0), (P(None, None, "x"), 1)],
                         ids=["heads", "rows", "head_dim"])
def test_sharded_reshape_reads_whole_only_when_regions_do_not_map(attention, spec, whole):
    prefix, value = attention
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
    target = {"q": jax.ShapeDtypeStruct((16, 4, 8), np.float32, sharding=NamedSharding(mesh, spec))}
    ckpt = tf2flax.open_checkpoint(prefix)
    loaded, result = tf2flax.init_params(ckpt, {"attention/query/kernel": "q"}, target,
                                         transforms={"q": ("reshape", (16, 4, 8))}, return_report=True)
    want = value.reshape(16, 4, 8)
    for shard in loaded["q"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
    assert result.stats.full_reads == whole
    assert result.stats.bytes_read == value.nbytes

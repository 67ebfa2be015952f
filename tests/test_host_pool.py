"""Host blocks for loads (tf2flax.hostmem): reused once jax drops them, never while an array uses them,
and, when staging for accelerators, bounded by the bytes in flight. Run on 8 real CPU devices with
checkpoints written by TensorFlow.
"""

import gc
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
import tf_writers
from tf2flax.hostmem import HOST_POOL, HostPool
from tf2flax.materialize import materialize
from tf2flax.mapping import build_plan
from tf2flax.targets import flatten_targets

PAGE = 4096


def test_block_is_reused_only_after_its_last_view_is_gone():
    pool = HostPool(min_bytes=PAGE)
    a, = pool.take([((4, 1024), np.float32)])
    a[:] = 1.0
    view = a[1:]
    address = a.ctypes.data
    del a
    gc.collect()
    b, = pool.take([((4, 1024), np.float32)])  # the view still holds the first block
    assert b.ctypes.data != address and pool.stats.reused_blocks == 0
    b[:] = 2.0
    assert (view == 1.0).all()
    del view
    gc.collect()
    c, = pool.take([((4, 1024), np.float32)])
    assert c.ctypes.data == address and pool.stats.reused_blocks == 1
    assert pool.stats.fresh_blocks == 2 and pool.stats.in_use_bytes == 2 * 4 * 4096


def test_bounded_pool_waits_for_a_block_to_come_back():
    pool = HostPool(limit=2 * 4 * PAGE, min_bytes=PAGE)
    held = pool.take([((PAGE,), np.float32), ((PAGE,), np.float32)])
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.take([((PAGE,), np.float32)])))
    waiter.start()
    time.sleep(0.3)
    assert not got and pool.stats.waits >= 1  # over the limit: waits
    del held[0]
    gc.collect()
    waiter.join(timeout=10)
    assert got and pool.stats.reused_blocks == 1
    assert pool.stats.peak_in_use_bytes <= pool.limit


def test_one_request_larger_than_the_limit_is_granted_alone():
    pool = HostPool(limit=PAGE, min_bytes=PAGE)
    big, = pool.take([((4 * PAGE,), np.float32)])
    assert big.nbytes == 16 * PAGE


def test_retained_free_blocks_are_bounded():
    pool = HostPool(retain_bytes=2 * PAGE, min_bytes=PAGE)
    blocks = pool.take([((PAGE,), np.uint8)] * 5)
    del blocks
    gc.collect()
    assert pool.stats.in_use_bytes == 0
    assert pool.free_bytes == 2 * PAGE


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Six float32 [256, 96] variables (blocks of 64 x 48 on a (4, 2) mesh) and two [1024, 2048]
    ones (1 MiB blocks, pooled by the default pool)."""
    T = tf_writers.tf()
    rng = np.random.default_rng(3)
    values = {f"small{i}": rng.standard_normal((256, 96), dtype=np.float32) for i in range(6)}
    values.update({f"big{i}": rng.standard_normal((1024, 2048), dtype=np.float32) for i in range(2)})
    directory = tmp_path_factory.mktemp("host_pool")
    prefix = T.train.Checkpoint(**{k: T.Variable(v) for k, v in values.items()}).write(str(directory / "ckpt"))
    return prefix, values


def _abstract(values, names):
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    sharding = NamedSharding(mesh, P("x", "y"))
    return {n: jax.ShapeDtypeStruct(values[n].shape, np.float32, sharding=sharding) for n in names}


def test_staging_stays_within_bytes_in_flight_and_reuses_blocks(ckpt):
    prefix, values = ckpt
    names = [f"small{i}" for i in range(6)]
    abstract = _abstract(values, names)
    leaf = 8 * 3 * PAGE  # 8 device blocks of 64 x 48 float32 (12 KiB, three pages) per leaf
    limit = 2 * leaf
    pool = HostPool(limit=limit, retain_bytes=limit, min_bytes=PAGE)
    with tf2flax.open_checkpoint(prefix) as opened:
        plan = build_plan(opened, {f"{n}/.ATTRIBUTES/VARIABLE_VALUE": n for n in names}, flatten_targets(abstract))
        out, stats = materialize(plan, {n: a.sharding for n, a in abstract.items()}, bytes_in_flight=limit,
                                 staging=True, host_pool=pool)
        jax.block_until_ready(out)
    for n in names:
        np.testing.assert_array_equal(np.asarray(out[n]), values[n])
        assert out[n].sharding == abstract[n].sharding
    assert pool.stats.peak_in_use_bytes <= limit
    assert pool.stats.fresh_bytes <= limit  # the other leaves reused the same blocks
    assert pool.stats.reused_blocks >= 8 * (len(names) - 2)
    gc.collect()
    assert pool.stats.in_use_bytes == 0  # the devices hold copies: every staging block came back


def test_repeated_loads_reuse_the_blocks_of_dropped_params_only(ckpt):
    prefix, values = ckpt
    names = ["big0", "big1"]
    abstract = _abstract(values, names)
    mapping = {f"{n}/.ATTRIBUTES/VARIABLE_VALUE": n for n in names}
    first = tf2flax.init_params(prefix, mapping, abstract, progress=False)
    reused = HOST_POOL.stats.reused_blocks
    second = tf2flax.init_params(prefix, mapping, abstract, progress=False)
    assert HOST_POOL.stats.reused_blocks == reused  # the first params still use their blocks
    addresses = {s.data.unsafe_buffer_pointer() for n in names for s in first[n].addressable_shards}
    del first  # no gc.collect(): the load takes back the blocks that only jax's reference cycles hold
    third = tf2flax.init_params(prefix, mapping, abstract, progress=False)
    assert HOST_POOL.stats.reused_blocks == reused + 16  # 2 leaves x 8 device blocks of 1 MiB
    assert {s.data.unsafe_buffer_pointer() for n in names for s in third[n].addressable_shards} == addresses
    for n in names:
        np.testing.assert_array_equal(np.asarray(second[n]), values[n])
        np.testing.assert_array_equal(np.asarray(third[n]), values[n])


def test_fresh_blocks_of_another_size_replace_free_ones():
    pool = HostPool(min_bytes=PAGE)
    blocks = pool.take([((PAGE,), np.uint8)] * 4)
    del blocks
    gc.collect()
    bigger, = pool.take([((2 * PAGE,), np.uint8)])  # no free block fits: two free ones are unmapped
    assert pool.stats.reused_blocks == 0 and pool.free_bytes == 2 * PAGE
    assert pool.free_bytes + pool.stats.in_use_bytes <= pool.stats.peak_in_use_bytes


def test_a_failed_mapping_leaves_nothing_counted_in_use(monkeypatch):
    pool = HostPool(limit=8 * PAGE, min_bytes=PAGE)
    kept, = pool.take([((PAGE,), np.uint8)])
    del kept
    gc.collect()

    def no_memory(size):
        raise MemoryError("no memory for a fresh block")

    monkeypatch.setattr(pool, "_fresh", no_memory)
    with pytest.raises(MemoryError):
        pool.take([((PAGE,), np.uint8), ((2 * PAGE,), np.uint8)])  # the first is reused, the second fails
    assert pool.stats.in_use_bytes == 0 and pool.free_bytes == PAGE
    again, = pool.take([((PAGE,), np.uint8)])  # neither waits nor leaks: the free block is reused
    assert pool.stats.reused_blocks == 2


def test_a_forked_child_loads_with_threads_of_its_own(ckpt):
    import multiprocessing

    prefix, values = ckpt
    names = ["big0"]
    abstract = _abstract(values, names)
    mapping = {"big0/.ATTRIBUTES/VARIABLE_VALUE": "big0"}
    tf2flax.init_params(prefix, mapping, abstract, progress=False)  # the parent's copier threads exist

    def child(queue):
        got = tf2flax.init_params(prefix, mapping, abstract, progress=False)
        queue.put(bool(np.array_equal(np.asarray(got["big0"]), values["big0"])))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0 and queue.get(timeout=5)

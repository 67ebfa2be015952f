"""The reader against TensorFlow's own reader, on checkpoints TensorFlow wrote.

TensorFlow is the judge: ``list_variables`` must be identical, and every tensor must be equal bit for
bit (NaN payloads, -0.0, bfloat16 bits, strings with NULs and non-UTF-8 bytes). Region reads must
equal numpy slicing of the full tensor, and region reads of partitioned variables must touch only
the slices they need.
"""

import collections
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tf2flax
import tf_writers
from tf2flax.errors import RegionError, TensorNotFoundError
from tf_writers import assert_tensor_equal, tensor_mismatch

ALL_CKPTS = ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt", "keras3_ckpt", "many_ckpt"]
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def reference():
    """TF's values per checkpoint prefix, computed once per module."""
    cache = {}

    def get(prefix):
        if prefix not in cache:
            cache[prefix] = tf_writers.tf_read_all(prefix)
        return cache[prefix]

    return get


# ---------------------------------------------------------------------------------------------
# Listing and whole-tensor reads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ALL_CKPTS)
def test_list_variables_matches_tensorflow(which, request):
    written = request.getfixturevalue(which)
    expected = tf_writers.tf_list_variables(written.prefix)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    got = ckpt.list_variables()
    assert [n for n, _ in got] == [n for n, _ in expected]
    assert got == expected
    assert list(ckpt.names) == [n for n, _ in expected]
    assert tf2flax.list_variables(written.prefix) == expected
    for name, shape in expected:
        assert name in ckpt
        assert tuple(ckpt.shape(name)) == tuple(shape)
        assert isinstance(ckpt.shape(name), tuple)
    # encoded slice keys (first byte 0x00) never leak into the listing
    assert not any(n.startswith("\x00") for n in ckpt.names)


@pytest.mark.parametrize("which", ALL_CKPTS)
def test_every_tensor_bitwise_equal_to_tensorflow(which, request, reference):
    written = request.getfixturevalue(which)
    ref = reference(written.prefix)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    dtype_map = tf_writers.tf().train.load_checkpoint(written.prefix).get_variable_to_dtype_map()
    failures = []
    for name, value in ref.items():
        why = tensor_mismatch(ckpt.read(name), value)
        if why:
            failures.append(f"{name!r}: {why}")
        if ckpt.dtype(name) != np.dtype(dtype_map[name].as_numpy_dtype):
            failures.append(f"{name!r}: dtype() {ckpt.dtype(name)} != TF {dtype_map[name].as_numpy_dtype}")
    assert not failures, "\n".join(failures[:20])
    assert len(ref) == len(ckpt.names)


@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt"])
def test_values_equal_what_the_writer_stored(which, request):
    """Independent of TF's reader: the values the writer put in (guards the writers, too)."""
    written = request.getfixturevalue(which)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    assert written.expected
    for name, value in written.expected.items():
        assert_tensor_equal(ckpt.read(name), value, name)


@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt"])
def test_reads_without_checksums_equal_tensorflow(which, request, reference):
    written = request.getfixturevalue(which)
    ckpt = tf2flax.open_checkpoint(written.prefix, verify_checksums=False)
    for name, value in reference(written.prefix).items():
        assert_tensor_equal(ckpt.read(name), value, name)


def test_string_and_special_values(zoo_ckpt):
    ckpt = tf2flax.open_checkpoint(zoo_ckpt.prefix)
    doc = ckpt.read("strings/doc_example")
    assert doc.dtype == object and doc.shape == (2, 2)
    assert doc.tolist() == [[b"hello", b""], [b"x" * 200, b"\x00\xff"]]
    assert ckpt.read("strings/scalar").shape == ()
    assert ckpt.read("strings/scalar").item() == b"\xff\xfe not utf-8 \x80"
    assert ckpt.read("strings/empty_scalar").item() == b""
    assert ckpt.read("strings/long")[1] == b"b" * 20000
    assert ckpt.read("strings/zero_size").shape == (0, 3)
    assert ckpt.read("zero/f64_3x0x2").shape == (3, 0, 2)
    bf = ckpt.read("dtypes/bfloat16")
    assert bf.dtype.name == "bfloat16"
    assert bf.view(np.uint16).ravel()[:5].tolist() == [0x7FC1, 0x8000, 0x0001, 0x3FC0, 0xFF80]
    f32 = ckpt.read("dtypes/float32").view(np.uint32).ravel()
    assert f32[:2].tolist() == [0x7FC00001, 0xFFC12345]   # NaN payloads survive
    assert ckpt.read("scalars/f32").shape == ()
    assert ckpt.read("scalars/f32").view(np.uint32) == 0x80000000  # -0.0
    assert ckpt.read("scalars/i64") == -(2 ** 63)
    assert ckpt.read("dtypes/uint64").max() == 2 ** 64 - 1


def test_odd_names(zoo_ckpt):
    ckpt = tf2flax.open_checkpoint(zoo_ckpt.prefix)
    for name, value in tf_writers.odd_names().items():
        assert name in ckpt, name
        assert_tensor_equal(ckpt.read(name), value, name)
    assert "odd/naïve" not in ckpt
    assert "odd" not in ckpt


def test_many_variables_several_index_blocks(many_ckpt, reference):
    index = many_ckpt.prefix + ".index"
    assert os.path.getsize(index) > 300_000, "fixture should span several 256 KiB index blocks"
    ckpt = tf2flax.open_checkpoint(many_ckpt.prefix)
    names = tf_writers.many_names(6000)
    assert ckpt.names == sorted(names)
    for i in [0, 1, 15, 16, 17, 2047, 2999, 3000, 4095, 5998, 5999]:
        value = ckpt.read(names[i])
        assert value.shape == (2, 3) and (value == i).all(), names[i]


# ---------------------------------------------------------------------------------------------
# Region reads
# ---------------------------------------------------------------------------------------------

def _random_regions(shape, rng, count, empty=False):
    """Tuples of slices (sometimes ints, negatives, fewer dims than rank; empties if ``empty``)."""
    out = [(), tuple(slice(None) for _ in shape)]
    for _ in range(count):
        region = []
        for d in shape:
            kind = rng.integers(0, 10)
            if d == 0 or kind == 0:
                region.append(slice(None))
            elif kind == 1:
                region.append(int(rng.integers(-d, d)))               # int index (drops the axis)
            elif kind == 2 and empty:
                a = int(rng.integers(0, d + 1))
                region.append(slice(a, a))                            # empty
            elif kind == 3:
                region.append(slice(int(rng.integers(-d, 0)), None))  # negative start
            else:
                a, b = sorted(int(x) for x in rng.integers(0, d, size=2))
                region.append(slice(a, b + 1))
        if shape and rng.integers(0, 5) == 0:
            region = region[: int(rng.integers(0, len(shape)))]      # trailing dims implicit
        out.append(tuple(region))
    return out


@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt"])
def test_region_reads_equal_numpy_slicing(which, request, reference):
    written = request.getfixturevalue(which)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    rng = np.random.default_rng(7)
    failures = []
    for name, full in reference(written.prefix).items():
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        for region in _random_regions(full.shape, rng, 12):
            try:
                got = ckpt.read(name, region)
            except Exception as e:  # report every failing case, not just the first
                failures.append(f"{name!r}[{region}]: raised {type(e).__name__}: {e}")
                continue
            why = tensor_mismatch(got, tf_writers.as_array(full[region]))
            if why:
                failures.append(f"{name!r}[{region}]: {why}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


# Parts of the TF1 partitioned variables (see tf_writers.PARTITIONED_SPECS):
#   part/rows (10, 3) rows 0-4 | 4-7 | 7-10;  part/cols (4, 7) cols 0-3 | 3-5 | 5-7
#   part/depth (3, 4, 11) last axis 0-3 | 3-5 | 5-7 | 7-9 | 9-11;  part/vec (13,) 0-4 | 4-7 | 7-10 | 10-13
BOUNDARY_REGIONS = {
    "part/rows": [(slice(3, 5),), (slice(3, 8), slice(1, 2)), (slice(0, 10),), (slice(4, 7),), (6,),
                  (slice(6, 7), 2), (slice(9, None),), (slice(-5, -1), slice(0, 3))],
    "part/cols": [(slice(None), slice(2, 6)), (1, slice(0, 7)), (slice(1, 3), slice(3, 5)), (3, 4),
                  (slice(None), slice(4, 6))],
    "part/depth": [(slice(None), slice(None), slice(2, 10)), (1, 2, slice(None)), (slice(0, 2), 3, 8),
                   (slice(1, 2), slice(1, 3), slice(4, 9))],
    "part/vec": [(slice(3, 11),), (slice(0, 13),), (12,), (-1,), (slice(7, 10),)],
    "part/big": [(slice(249, 251),), (slice(0, 1000), slice(10, 11)), (slice(500, 760), slice(60, None))],
    "part/bf16": [(slice(None), slice(2, 4)), (5, slice(None)), (slice(1, 3), 3)],
}


@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt"])
def test_empty_region_reads(which, request, reference):
    """Empty regions (start == stop, or past the end) give empty arrays of the right shape and dtype."""
    written = request.getfixturevalue(which)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    failures = []
    for name, full in reference(written.prefix).items():
        if full.ndim == 0 or name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        d = full.shape[0]
        regions = [(slice(0, 0),), (slice(d, d),), (slice(d // 2, d // 2),), (slice(d + 5, None),)]
        if full.ndim > 1:
            e = full.shape[-1]
            regions.append(tuple([slice(None)] * (full.ndim - 1) + [slice(e // 2, e // 2)]))
            regions.append((min(d - 1, 0), slice(3, 1)) if d else (slice(0, 0),))
        for region in regions:
            try:
                why = tensor_mismatch(ckpt.read(name, region), full[region])
            except Exception as e:
                why = f"raised {type(e).__name__}: {e}"
            if why:
                failures.append(f"{name!r}[{region}]: {why}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


def test_region_reads_across_slice_boundaries(tf1_ckpt, reference):
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    ref = reference(tf1_ckpt.prefix)
    for name, regions in BOUNDARY_REGIONS.items():
        for region in regions:
            assert_tensor_equal(ckpt.read(name, region), ref[name][region], f"{name}{region}")


def test_get_slice_indexes_lazily_like_numpy(tf1_ckpt, reference):
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    ref = reference(tf1_ckpt.prefix)["part/depth"]           # (3, 4, 11), 5 slices on the last axis
    view = ckpt.get_slice("part/depth")
    before = ckpt.stats.bytes_read
    assert view.shape == (3, 4, 11) and view.dtype == ref.dtype and ckpt.stats.bytes_read == before
    for index in [(..., 4), (1, ...), (..., slice(2, 9)), (0, ..., slice(3, 5)), ..., (2, 1, ..., 10), (-1, -2)]:
        assert_tensor_equal(view[index], ref[index], f"part/depth[{index}]")
    assert "part/depth" in repr(view) and "[3, 4, 11]" in repr(view)
    with pytest.raises(TensorNotFoundError, match="part/dept"):
        ckpt.get_slice("part/dept")


@pytest.mark.parametrize("index, message", [
    ((slice(None), 4), r"index 4 is out of range for dimension 1 of size 4"),
    ((0, 0, 0, 0), r"has 4 dimensions, the tensor has 3"),
    ((slice(None, None, 2),), r"only step-1 slices"),
    ((..., ...), r"more than one '\.\.\.'"),
    ((np.array([0, 2]),), r"only integers, step-1 slices and '\.\.\.'"),
])
def test_bad_regions_name_the_tensor(tf1_ckpt, index, message):
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    with pytest.raises(RegionError, match=message) as caught:
        ckpt.read("part/depth", index)
    assert isinstance(caught.value, IndexError)
    assert str(caught.value).startswith(f"{ckpt.path}: tensor 'part/depth' of shape [3, 4, 11]: ")


def test_region_read_of_partitioned_variable_reads_fewer_bytes(tf1_ckpt):
    # part/big is (1000, 64) float32 in 4 slices of 250 rows (64,000 bytes each).
    full_ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    before = full_ckpt.stats.bytes_read
    full = full_ckpt.read("part/big")
    full_bytes = full_ckpt.stats.bytes_read - before
    assert full_bytes >= 256_000

    region_ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    before = region_ckpt.stats.bytes_read
    part = region_ckpt.read("part/big", (slice(10, 20),))
    region_bytes = region_ckpt.stats.bytes_read - before
    np.testing.assert_array_equal(part, full[10:20])
    assert 0 < region_bytes <= 64_000, region_bytes   # at most the one slice it lies in

    # Rows 200..300 straddle slices 0 and 1: at most two slices, never all four.
    before = region_ckpt.stats.bytes_read
    np.testing.assert_array_equal(region_ckpt.read("part/big", (slice(200, 300),)), full[200:300])
    assert region_ckpt.stats.bytes_read - before <= 128_000


def test_region_read_of_tf2_sliced_variable_reads_fewer_bytes(tf2_ckpt, reference):
    name = "big_3d" + VALUE_SUFFIX   # (7, 9, 50) float64 = 25,200 bytes, split by MaxShardSizePolicy
    ckpt = tf2flax.open_checkpoint(tf2_ckpt.prefix)
    before = ckpt.stats.bytes_read
    full = ckpt.read(name)
    full_bytes = ckpt.stats.bytes_read - before
    assert full_bytes >= 25_200
    assert_tensor_equal(full, reference(tf2_ckpt.prefix)[name], name)
    fresh = tf2flax.open_checkpoint(tf2_ckpt.prefix)
    before = fresh.stats.bytes_read
    got = fresh.read(name, (6, 8))
    assert_tensor_equal(got, reference(tf2_ckpt.prefix)[name][6, 8], name)
    assert fresh.stats.bytes_read - before < full_bytes / 2


def test_tf2_fixture_really_splits_variables_across_shards(tf2_ckpt):
    """Guards the fixture: MaxShardSizePolicy must have produced slice keys and several data files."""
    from tf2flax.formats.table import parse_table

    data_files = [p for p in os.listdir(tf2_ckpt.directory)
                  if p.startswith(os.path.basename(tf2_ckpt.prefix) + ".data-")]
    assert len(data_files) >= 3
    keys = [k for k, _ in parse_table(Path(tf2_ckpt.prefix + ".index").read_bytes())]
    assert sum(k.startswith(b"\x00") for k in keys) >= 4


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint: directory, prefix, moved directory, URL
# ---------------------------------------------------------------------------------------------

def test_directory_and_prefix_open_the_same_checkpoint(tf1_ckpt, tf2_ckpt):
    for written in (tf1_ckpt, tf2_ckpt):
        by_dir = tf2flax.open_checkpoint(written.directory)
        by_str_dir = tf2flax.open_checkpoint(str(written.directory) + "/")
        by_prefix = tf2flax.open_checkpoint(written.prefix)
        expected = tf_writers.tf_list_variables(written.directory)
        assert by_dir.list_variables() == by_prefix.list_variables() == by_str_dir.list_variables() == expected


def test_directory_resolves_to_latest_checkpoint(tf2_ckpt, reference):
    name = "big_rows" + VALUE_SUFFIX
    latest = tf2flax.open_checkpoint(tf2_ckpt.directory)
    first = tf2flax.open_checkpoint(tf2_ckpt.extra["first"])
    assert_tensor_equal(latest.read(name), reference(tf2_ckpt.prefix)[name], "latest")
    assert_tensor_equal(first.read(name), reference(tf2_ckpt.extra["first"])[name], "first")
    assert not np.array_equal(latest.read(name), first.read(name))
    assert latest.read("save_counter" + VALUE_SUFFIX) == 2
    assert first.read("save_counter" + VALUE_SUFFIX) == 1


def test_moved_tf1_directory_still_opens(tmp_path):
    src, moved = tmp_path / "src", tmp_path / "elsewhere" / "moved"
    prefix = tf_writers.write_tf1_small(src)
    state = (src / "checkpoint").read_text()
    assert f'"{prefix}"' in state and os.path.isabs(prefix), "TF1 Saver writes absolute paths"
    expected = tf_writers.tf_read_all(prefix)
    shutil.copytree(src, moved)
    shutil.rmtree(src)
    ckpt = tf2flax.open_checkpoint(moved)
    assert ckpt.list_variables() == [("b", [3]), ("w", [5, 2])]
    for name, value in expected.items():
        assert_tensor_equal(ckpt.read(name), value, name)
    assert_tensor_equal(tf2flax.load_variable(moved, "w"), expected["w"], "load_variable")
    # TensorFlow itself cannot open the moved directory: the fallback is ours.
    with pytest.raises(ValueError, match="Couldn't find 'checkpoint' file or checkpoints"):
        tf_writers.tf().train.load_checkpoint(str(moved))


def test_state_file_with_absolute_path_to_another_directory(tmp_path, tf1_ckpt):
    """TF's latest_checkpoint follows an absolute model_checkpoint_path wherever it points."""
    other = tmp_path / "only_state"
    other.mkdir()
    (other / "checkpoint").write_text(f'model_checkpoint_path: "{tf1_ckpt.prefix}"\n')
    assert tf_writers.tf().train.latest_checkpoint(str(other)) == tf1_ckpt.prefix
    ckpt = tf2flax.open_checkpoint(other)
    assert ckpt.list_variables() == tf_writers.tf_list_variables(tf1_ckpt.prefix)


def test_state_file_relative_path_and_pathlike(tf2_ckpt):
    state = (tf2_ckpt.directory / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-2"' in state
    ckpt = tf2flax.open_checkpoint(Path(tf2_ckpt.directory))
    assert ckpt.read("save_counter" + VALUE_SUFFIX) == 2


def test_file_url(tf1_ckpt, reference):
    url = "file://" + tf1_ckpt.prefix
    ckpt = tf2flax.open_checkpoint(url)
    assert ckpt.list_variables() == tf_writers.tf_list_variables(tf1_ckpt.prefix)
    for name in ("part/cols", "cpu1/names", "dense/kernel"):
        assert_tensor_equal(ckpt.read(name), reference(tf1_ckpt.prefix)[name], name)
    dir_ckpt = tf2flax.open_checkpoint("file://" + str(tf1_ckpt.directory) + "/")
    assert dir_ckpt.names == ckpt.names


# ---------------------------------------------------------------------------------------------
# Drop-ins for tf.train.load_variable / list_variables
# ---------------------------------------------------------------------------------------------

def test_load_variable_and_list_variables_drop_ins(tf1_ckpt, tf2_ckpt, zoo_ckpt):
    T = tf_writers.tf()
    for path in (tf1_ckpt.directory, tf1_ckpt.prefix, tf2_ckpt.directory, zoo_ckpt.prefix):
        assert tf2flax.list_variables(path) == tf_writers.tf_list_variables(path)
        for name, _ in tf_writers.tf_list_variables(path)[:: 3]:
            assert_tensor_equal(tf2flax.load_variable(path, name),
                                tf_writers.as_array(T.train.load_variable(str(path), name)), f"{path}:{name}")


# ---------------------------------------------------------------------------------------------
# TF2 object graph
# ---------------------------------------------------------------------------------------------

def _tf_object_graph(prefix):
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf_writers.tf_read_all(prefix)["_CHECKPOINTABLE_OBJECT_GRAPH"].item())
    return graph


def _escape(local_name):
    return local_name.replace(".", "..").replace("/", ".S")


def _non_optimizer_paths(graph):
    """Breadth-first shortest path to every node that never passes through an 'optimizer' child."""
    paths = {0: ""}
    queue = collections.deque([0])
    while queue:
        node = queue.popleft()
        for child in graph.nodes[node].children:
            if child.local_name == "optimizer" or child.node_id in paths:
                continue
            prefix = paths[node] + "/" if paths[node] else ""
            paths[child.node_id] = prefix + _escape(child.local_name)
            queue.append(child.node_id)
    return paths


def test_object_graph_none_for_tf1(tf1_ckpt, zoo_ckpt):
    assert tf2flax.open_checkpoint(tf1_ckpt.prefix).object_graph is None
    assert tf2flax.open_checkpoint(zoo_ckpt.prefix).object_graph is None


def test_object_graph_keras3_model_with_optimizer(keras3_ckpt):
    ckpt = tf2flax.open_checkpoint(keras3_ckpt.prefix)
    graph = ckpt.object_graph
    assert graph is not None
    variables = list(graph.variables)
    by_key = {v.key: v for v in variables}
    assert len(by_key) == len(variables), "one object per checkpoint key"
    keys = {n for n in ckpt.names if n != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(by_key) == keys

    tf_graph = _tf_object_graph(keras3_ckpt.prefix)
    model_paths = _non_optimizer_paths(tf_graph)
    seen = 0
    for node_id, node in enumerate(tf_graph.nodes):
        for attr in node.attributes:
            v = by_key[attr.checkpoint_key]
            seen += 1
            assert v.full_name == attr.full_name
            assert isinstance(v.full_name, str)
            assert v.object_path == attr.checkpoint_key[: -len(VALUE_SUFFIX)]
            if attr.full_name.startswith("sequential/"):
                # a model variable, wherever its checkpoint key happens to live
                assert v.is_optimizer is False, v
                assert v.model_path == model_paths[node_id], v
                assert v.model_path.startswith("model/"), v
                assert not v.model_path.startswith("optimizer/"), v
            elif attr.full_name.startswith("adam/"):
                assert v.is_optimizer is True, v
            else:
                assert attr.full_name == "save_counter"
                assert v.is_optimizer is False and v.model_path == "save_counter"
    assert seen == len(variables)

    # The concrete shape of a Keras 3 checkpoint (observed with TF 2.21 / Keras 3):
    kernel = by_key["optimizer/_trainable_variables/0" + VALUE_SUFFIX]
    assert kernel.full_name == "sequential/d1/kernel"
    assert kernel.model_path == "model/_functional/_operations/1/_kernel"
    assert kernel.object_path == "optimizer/_trainable_variables/0"
    mean = by_key["model/_functional/_operations/2/moving_mean" + VALUE_SUFFIX]
    assert mean.full_name == "sequential/bn/moving_mean"
    assert mean.model_path == mean.object_path == "model/_functional/_operations/2/moving_mean"
    assert not mean.is_optimizer
    model_vars = [v for v in variables if not v.is_optimizer and v.full_name != "save_counter"]
    assert sorted(v.full_name for v in model_vars) == sorted([
        "sequential/d1/kernel", "sequential/d1/bias", "sequential/d2/kernel", "sequential/d2/bias",
        "sequential/bn/gamma", "sequential/bn/beta", "sequential/bn/moving_mean",
        "sequential/bn/moving_variance"])
    assert sum(v.is_optimizer for v in variables) == 14   # 12 Adam slots + iterations + learning rate
    # every object's key reads the same tensor as TF
    for v in variables:
        assert v.key in ckpt


def test_object_graph_tf2_names_and_escaping(tf2_ckpt):
    graph = tf2flax.open_checkpoint(tf2_ckpt.prefix).object_graph
    by_key = {v.key: v for v in graph.variables}
    assert set(by_key) == set(tf2_ckpt.expected)
    dot = by_key["with..dot" + VALUE_SUFFIX]
    assert dot.object_path == dot.model_path == "with..dot"
    slash = by_key["with.Sslash" + VALUE_SUFFIX]
    assert slash.object_path == "with.Sslash"
    inner = by_key["nested/inner" + VALUE_SUFFIX]
    assert inner.object_path == inner.model_path == "nested/inner"
    assert by_key["na\u00efve" + VALUE_SUFFIX].object_path == "na\u00efve"
    assert all(not v.is_optimizer for v in graph.variables)
    assert by_key["save_counter" + VALUE_SUFFIX].full_name == "save_counter"


# ---------------------------------------------------------------------------------------------
# Beyond TensorFlow's reader, and concurrency
# ---------------------------------------------------------------------------------------------

def test_sliced_string_tensors(tmp_path):
    """TF writes sliced DT_STRING tensors but its CheckpointReader cannot read them; we can."""
    prefix, expected = tf_writers.write_sliced_strings(tmp_path)
    with pytest.raises(Exception, match="string"):
        tf_writers.tf().train.load_checkpoint(prefix).get_tensor("sliced/strings")
    ckpt = tf2flax.open_checkpoint(prefix)
    assert ckpt.list_variables() == tf_writers.tf_list_variables(prefix)
    for name, value in expected.items():
        assert_tensor_equal(ckpt.read(name), value, name)
        assert ckpt.dtype(name) == np.dtype(object)
    full = expected["sliced/strings2d"]
    for region in [(slice(1, 3), slice(0, 2)), (2,), (slice(None), 2), (slice(0, 0),), (3, 0)]:
        assert_tensor_equal(ckpt.read("sliced/strings2d", region), full[region], str(region))
    assert_tensor_equal(ckpt.read("sliced/strings", (slice(1, 4),)), expected["sliced/strings"][1:4], "1:4")


def test_returned_arrays_are_independent(tf1_ckpt):
    """Reads must not hand out views of a shared cache that a caller could corrupt."""
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    for name in ("dense/kernel", "part/rows", "cpu1/names"):
        first = ckpt.read(name)
        try:
            first[...] = first.flat[0] if first.dtype != object else b"clobbered"
        except ValueError:
            continue   # read-only arrays are fine too
        assert_tensor_equal(ckpt.read(name), tf1_ckpt.expected[name], name)


def test_concurrent_reads_from_threads(tf1_ckpt, tf2_ckpt, reference):
    """One Checkpoint shared by threads (as sharded loading does): same results, exact byte count."""
    from concurrent.futures import ThreadPoolExecutor

    for written in (tf1_ckpt, tf2_ckpt):
        ref = reference(written.prefix)
        ckpt = tf2flax.open_checkpoint(written.prefix)
        rng = np.random.default_rng(3)
        jobs = []
        for name, full in ref.items():
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
                jobs += [(name, r) for r in _random_regions(full.shape, rng, 4)]
        jobs *= 3

        def run(job):
            name, region = job
            return tensor_mismatch(ckpt.read(name, region), tf_writers.as_array(ref[name][region]))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, jobs))
        bad = [(job, why) for job, why in zip(jobs, results) if why]
        assert not bad, bad[:5]
        assert ckpt.stats.bytes_read > 0


def test_bytes_read_of_a_full_dense_read(tf1_ckpt):
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    before = ckpt.stats.bytes_read
    value = ckpt.read("dense/kernel")
    delta = ckpt.stats.bytes_read - before
    assert value.nbytes <= delta <= 2 * value.nbytes + 4096, delta


def test_big_endian_checkpoint(tmp_path):
    """A bundle whose header says BIG endian (as TF writes on s390x): TF byte-swaps; so must we."""
    prefix, expected = tf_writers.write_big_endian(tmp_path)
    ref = tf_writers.tf_read_all(prefix)
    for name, value in expected.items():      # guards the fixture: TF reads it back exactly
        assert_tensor_equal(ref[name], value, f"TF {name}")
    ckpt = tf2flax.open_checkpoint(prefix)
    failures = []
    for name, value in expected.items():
        try:
            why = tensor_mismatch(ckpt.read(name), value)
        except Exception as e:
            why = f"raised {type(e).__name__}: {e}"
        if why:
            failures.append(f"{name}: {why}")
        if value.ndim and value.size:
            try:
                why = tensor_mismatch(ckpt.read(name, (slice(1, None),)), value[1:])
            except Exception as e:
                why = f"raised {type(e).__name__}: {e}"
            if why:
                failures.append(f"{name}[1:]: {why}")
    assert not failures, "\n".join(failures)


def test_checkpoint_is_a_context_manager_that_closes_its_files(tf2_ckpt):
    path = tf2_ckpt.directory / tf2_ckpt.prefix
    name = next(n for n in tf2_ckpt.expected)
    with tf2flax.open_checkpoint(path) as ckpt:
        assert_tensor_equal(ckpt.read(name), tf2_ckpt.expected[name])
        assert ckpt.store._fds, "a read opens the data file"
    assert not ckpt.store._fds, "leaving the block closes every descriptor"

"""Damaged, missing and unsupported checkpoints: the reader must raise a Tf2FlaxError subclass.

Never an IndexError/struct.error/KeyError from inside, never a hang, never silently wrong data.
Damage comes in two kinds: raw (bit flips, truncation, random bytes: caught by the CRCs and the
decoder) and crafted (an index rebuilt with *valid* CRCs but impossible contents: caught only by
the reader's own consistency checks).
"""

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import tf2flax
import tf_writers
from tf2flax.errors import (CheckpointNotFoundError, CorruptCheckpointError, TensorNotFoundError,
                            Tf2FlaxError, UnsupportedFormatError)
from tf_writers import assert_tensor_equal, build_table, read_footer, tensor_mismatch

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(autouse=True)
def no_hang():
    """Fail (instead of hanging forever) if a test runs for more than two minutes."""
    def timeout(signum, frame):
        raise TimeoutError("test ran for more than 120 s: the reader hangs on damaged input?")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def small_values():
    rng = np.random.default_rng(99)
    return {
        "a_f32": rng.standard_normal((3, 5)).astype(np.float32),
        "b_i64": rng.integers(-2 ** 62, 2 ** 62, size=(4,), dtype=np.int64),
        "c_str": np.array([b"hello", b"", b"x" * 130, b"\x00\xff\x01"], dtype=object),
        "d_f16": rng.standard_normal((2, 3)).astype(np.float16),
        "e_scalar": np.array(rng.standard_normal(), np.float64),
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small one-shard bundle (4 numeric tensors, 1 string tensor), its values and file bytes."""
    d = tmp_path_factory.mktemp("small_bundle")
    values = small_values()
    prefix = tf_writers.write_raw_bundle(d / "small", values)
    index = Path(prefix + ".index").read_bytes()
    data = Path(prefix + ".data-00000-of-00001").read_bytes()
    # Where each numeric tensor's bytes lie, found by content (values are random, so unique).
    spans = {}
    for name, v in values.items():
        if v.dtype != object:
            raw = v.tobytes()
            assert data.count(raw) == 1, name
            spans[name] = (data.index(raw), data.index(raw) + len(raw))
    return {"prefix": prefix, "values": values, "index": index, "data": data, "spans": spans}


def read_all(ckpt):
    return {name: ckpt.read(name) for name in ckpt.names}


def open_and_read(path, **kw):
    return read_all(tf2flax.open_checkpoint(path, **kw))


def expect_error(kind, path, **kw):
    """``kind`` must be raised by opening or by reading every tensor; return the exception."""
    try:
        open_and_read(path, **kw)
    except kind as e:
        return e
    except Exception as e:  # a foreign exception is a bug in itself: show it
        pytest.fail(f"expected {kind.__name__}, got {type(e).__module__}.{type(e).__name__}: {e}")
    pytest.fail(f"expected {kind.__name__}, but every tensor was read without error")


def copy_prefix(prefix, directory):
    """Copy a checkpoint's files (prefix.*) into ``directory``; return the new prefix."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    src = Path(prefix)
    for f in src.parent.iterdir():
        if f.name.startswith(src.name + "."):
            shutil.copy(f, directory / f.name)
    return str(directory / src.name)


def flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# Bit flips
# ---------------------------------------------------------------------------------------------

def _index_regions(index: bytes):
    """Byte positions of the index whose damage the CRCs must catch, and the other positions."""
    footer = read_footer(index)
    meta_off, meta_size = footer["metaindex"]
    f0 = footer["footer"][0]
    unprotected = set(range(meta_off, meta_off + meta_size + 5))   # metaindex block: unused by TF
    unprotected |= set(range(f0, f0 + 40))                         # block handles and zero padding
    protected = [p for p in range(len(index)) if p not in unprotected]
    return protected, sorted(unprotected)


@pytest.mark.parametrize("verify", [True, False])
def test_bit_flip_anywhere_in_index(small, tmp_path, verify):
    """Flips in blocks, trailers or magic raise CorruptCheckpointError, even with verify_checksums=False.

    Flips in the bytes TF never checks (footer handles/padding, unused metaindex) may go unnoticed,
    but then every tensor must still read correctly.
    """
    prefix = copy_prefix(small["prefix"], tmp_path)
    index, values = small["index"], small["values"]
    protected, unprotected = _index_regions(index)
    assert len(protected) > 150
    silent, wrong = [], []
    for pos in range(len(index)):
        bit = (pos * 5) % 8
        Path(prefix + ".index").write_bytes(flip(index, pos, bit))
        try:
            got = open_and_read(prefix, verify_checksums=verify)
        except CorruptCheckpointError:
            continue
        except Exception as e:
            wrong.append(f"byte {pos} bit {bit}: {type(e).__name__}: {e}")
            continue
        if pos in protected:
            silent.append(pos)
        for name, v in values.items():
            why = tensor_mismatch(got.get(name), v)
            if why:
                wrong.append(f"byte {pos} bit {bit}: silently wrong {name}: {why}")
    assert not wrong, "\n".join(wrong[:20])
    assert not silent, f"flips at protected index bytes {silent[:20]} went unnoticed"


def test_bit_flips_in_data_are_caught_by_crc(small, tmp_path):
    prefix = copy_prefix(small["prefix"], tmp_path)
    data_file = Path(prefix + ".data-00000-of-00001")
    data, values = small["data"], small["values"]
    problems = []
    for pos in range(len(data)):
        for bit in (0, 7):
            data_file.write_bytes(flip(data, pos, bit))
            ckpt = tf2flax.open_checkpoint(prefix)   # the index is intact: opening must work
            raised = 0
            for name, v in values.items():
                try:
                    got = ckpt.read(name)
                except CorruptCheckpointError:
                    raised += 1
                    continue
                except Exception as e:
                    problems.append(f"byte {pos} bit {bit} {name}: {type(e).__name__}: {e}")
                    continue
                why = tensor_mismatch(got, v)
                if why:
                    problems.append(f"byte {pos} bit {bit}: silently wrong {name}: {why}")
            if raised != 1:
                problems.append(f"byte {pos} bit {bit}: {raised} tensors raised, expected exactly 1")
    assert not problems, "\n".join(problems[:20])


def test_bit_flips_in_data_without_checksums_read_the_flipped_bytes(small, tmp_path):
    """verify_checksums=False: no exception for numeric tensors, and exactly the flipped bit differs."""
    prefix = copy_prefix(small["prefix"], tmp_path)
    data_file = Path(prefix + ".data-00000-of-00001")
    data, values = small["data"], small["values"]
    checked = 0
    for name, (start, stop) in small["spans"].items():
        for pos in range(start, stop):
            data_file.write_bytes(flip(data, pos, 3))
            got = tf2flax.open_checkpoint(prefix, verify_checksums=False).read(name)
            expected = np.frombuffer(flip(data, pos, 3)[start:stop], values[name].dtype)
            assert_tensor_equal(got, expected.reshape(values[name].shape), f"{name} byte {pos}")
            checked += 1
    assert checked == sum(v.nbytes for v in values.values() if v.dtype != object)


def test_bit_flips_in_string_tensor_without_checksums(small, tmp_path):
    """Damaged string lengths must raise CorruptCheckpointError, never an IndexError or a short array."""
    prefix = copy_prefix(small["prefix"], tmp_path)
    data_file = Path(prefix + ".data-00000-of-00001")
    data = small["data"]
    numeric = set()
    for start, stop in small["spans"].values():
        numeric |= set(range(start, stop))
    for pos in (p for p in range(len(data)) if p not in numeric):
        for bit in range(8):
            data_file.write_bytes(flip(data, pos, bit))
            try:
                got = tf2flax.open_checkpoint(prefix, verify_checksums=False).read("c_str")
            except CorruptCheckpointError:
                continue
            assert got.shape == (4,) and got.dtype == object
            assert all(type(s) is bytes for s in got)


def test_bit_flips_in_partitioned_variable_data(tf1_ckpt, tmp_path):
    """Every byte of both data shards of a TF1 sharded Saver checkpoint is covered by a CRC."""
    prefix = copy_prefix(tf1_ckpt.prefix, tmp_path)
    names = tf2flax.open_checkpoint(prefix).names
    rng = np.random.default_rng(5)
    for shard in ("data-00000-of-00002", "data-00001-of-00002"):
        path = Path(prefix + "." + shard)
        data = path.read_bytes()
        positions = sorted(set(rng.integers(0, len(data), size=150).tolist()) | {0, len(data) - 1})
        for pos in positions:
            path.write_bytes(flip(data, pos, int(rng.integers(0, 8))))
            ckpt = tf2flax.open_checkpoint(prefix)
            with pytest.raises(CorruptCheckpointError):
                for name in names:
                    ckpt.read(name)
        path.write_bytes(data)


def test_region_reads_and_checksums(small, tmp_path):
    """A flipped byte: whole reads always catch it; region reads catch it with verify_regions=True.

    By default a region read fetches only its bytes, which no checksum covers (documented); a
    region that is the whole tensor is a whole read and is verified.
    """
    prefix = copy_prefix(small["prefix"], tmp_path)
    start, _ = small["spans"]["a_f32"]
    Path(prefix + ".data-00000-of-00001").write_bytes(flip(small["data"], start, 0))  # element [0, 0]
    ckpt = tf2flax.open_checkpoint(prefix)
    with pytest.raises(CorruptCheckpointError, match="a_f32"):
        ckpt.read("a_f32")
    with pytest.raises(CorruptCheckpointError, match="a_f32"):
        ckpt.read("a_f32", (slice(None), slice(None)))
    before = ckpt.stats.bytes_read
    ckpt.read("a_f32", (slice(0, 1), slice(0, 2)))
    assert ckpt.stats.bytes_read - before < small["values"]["a_f32"].nbytes
    strict = tf2flax.open_checkpoint(prefix, verify_regions=True)
    with pytest.raises(CorruptCheckpointError, match="a_f32"):
        strict.read("a_f32", (slice(0, 1), slice(0, 2)))
    untouched = tf2flax.open_checkpoint(prefix, verify_regions=True)
    last_row = small["values"]["a_f32"].shape[0] - 1
    with pytest.raises(CorruptCheckpointError):  # the whole stored tensor is checked, not only the region
        untouched.read("a_f32", (slice(last_row, last_row + 1),))


# ---------------------------------------------------------------------------------------------
# Truncation, random bytes, missing files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verify", [True, False])
def test_truncated_index(small, tmp_path, verify):
    prefix = copy_prefix(small["prefix"], tmp_path)
    index = small["index"]
    for n in sorted({0, 1, 8, 47, 48, 49, 100, len(index) // 2, len(index) - 48, len(index) - 5,
                     len(index) - 1}):
        Path(prefix + ".index").write_bytes(index[:n])
        e = expect_error(CorruptCheckpointError, prefix, verify_checksums=verify)
        assert "index" in str(e), str(e)
    # appended garbage moves the footer: also corrupt
    Path(prefix + ".index").write_bytes(index + b"\x00" * 7)
    expect_error(CorruptCheckpointError, prefix, verify_checksums=verify)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_data_file(small, tmp_path, verify):
    prefix = copy_prefix(small["prefix"], tmp_path)
    data = small["data"]
    path = Path(prefix + ".data-00000-of-00001")
    for n in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1}):
        path.write_bytes(data[:n])
        ckpt = tf2flax.open_checkpoint(prefix, verify_checksums=verify)
        outcomes = {}
        for name, v in small["values"].items():
            try:
                outcomes[name] = tensor_mismatch(ckpt.read(name), v) or "ok"
            except CorruptCheckpointError:
                outcomes[name] = "raised"
            except Exception as e:
                pytest.fail(f"truncated to {n}: {name}: {type(e).__name__}: {e}")
        assert "raised" in outcomes.values(), f"truncated to {n}: {outcomes}"
        assert set(outcomes.values()) <= {"ok", "raised"}, f"truncated to {n}: {outcomes}"


def test_truncated_state_file(tf2_ckpt, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tf2_ckpt.directory, d)
    state = (d / "checkpoint").read_bytes()
    for n in (0, 5, len(state) // 4, state.index(b'"') + 3):
        (d / "checkpoint").write_bytes(state[:n])
        with pytest.raises((CheckpointNotFoundError, CorruptCheckpointError)):
            tf2flax.open_checkpoint(d)


def test_random_bytes_as_index(small, tmp_path):
    prefix = copy_prefix(small["prefix"], tmp_path)
    rng = np.random.default_rng(2024)
    magic = tf_writers.TABLE_MAGIC.to_bytes(8, "little")
    for trial in range(300):
        n = int(rng.integers(0, 3000))
        junk = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        if trial % 3 == 1:
            junk += magic                                    # passes the magic check
        elif trial % 3 == 2:
            # a plausible footer: handles pointing inside the junk
            a, b = sorted(int(x) for x in rng.integers(0, max(n, 1), size=2))
            footer = (tf_writers._varint(a) + tf_writers._varint(8) + tf_writers._varint(b)
                      + tf_writers._varint(int(rng.integers(0, 200))))
            junk += footer + b"\x00" * (40 - len(footer)) + magic
        Path(prefix + ".index").write_bytes(junk)
        expect_error(CorruptCheckpointError, prefix)


def test_index_is_a_valid_table_of_junk(small, tmp_path):
    """A well-formed table (valid CRCs) whose header/entries are not bundle protos."""
    prefix = copy_prefix(small["prefix"], tmp_path)
    cases = [
        [],                                                   # no entries at all: no header
        [(b"a_f32", b"\x08\x01")],                            # no header entry
        [(b"", b"\xff\xff\xff")],                             # header does not decode
        [(b"", b"\x08\x01\x1a\x02\x08\x01"), (b"a_f32", b"\xff\xff\xff\xff")],   # entry does not decode
        [(b"", b"\x08\x01\x1a\x02\x08\x01"), (b"\x00garbage", b"")],             # bad slice key
    ]
    for entries in cases:
        Path(prefix + ".index").write_bytes(build_table(entries))
        expect_error(CorruptCheckpointError, prefix)


def test_missing_data_shard(tf1_ckpt, tmp_path):
    prefix = copy_prefix(tf1_ckpt.prefix, tmp_path)
    missing = prefix + ".data-00001-of-00002"
    os.remove(missing)
    e = expect_error(CheckpointNotFoundError, prefix)
    assert "data-00001-of-00002" in str(e)
    # tensors on the surviving shard stay readable (opening reads only the index)
    ckpt = tf2flax.open_checkpoint(prefix)
    assert_tensor_equal(ckpt.read("dense/kernel"), tf1_ckpt.expected["dense/kernel"], "dense/kernel")
    with pytest.raises(CheckpointNotFoundError):
        ckpt.read("cpu1/counter")


def test_missing_index(small, tmp_path):
    prefix = copy_prefix(small["prefix"], tmp_path)
    os.remove(prefix + ".index")
    with pytest.raises(CheckpointNotFoundError):
        tf2flax.open_checkpoint(prefix)


def test_state_file_pointing_nowhere(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-99"\n'
                                         'all_model_checkpoint_paths: "ckpt-99"\n')
    e = expect_error(CheckpointNotFoundError, tmp_path)
    assert "ckpt-99" in str(e)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/nonexistent/dir/model.ckpt-5"\n')
    expect_error(CheckpointNotFoundError, tmp_path)
    (tmp_path / "checkpoint").write_text("")
    expect_error(CheckpointNotFoundError, tmp_path)


def test_empty_and_missing_paths(tmp_path):
    expect_error(CheckpointNotFoundError, tmp_path)                        # empty directory
    expect_error(CheckpointNotFoundError, tmp_path / "no_such_dir")
    expect_error(CheckpointNotFoundError, tmp_path / "no_such_prefix-1")
    (tmp_path / "README.txt").write_text("not a checkpoint")
    expect_error(CheckpointNotFoundError, tmp_path)                        # no checkpoint in dir
    expect_error(CheckpointNotFoundError, tmp_path / "README.txt")         # a file, not a table
    with pytest.raises(CheckpointNotFoundError):
        tf2flax.list_variables(tmp_path / "nothing")
    with pytest.raises(CheckpointNotFoundError):
        tf2flax.load_variable(tmp_path / "nothing", "x")


def test_errors_are_tf2flax_errors():
    for cls in (CheckpointNotFoundError, TensorNotFoundError, CorruptCheckpointError,
                UnsupportedFormatError, tf2flax.errors.MappingError, tf2flax.errors.StorageError):
        assert issubclass(cls, Tf2FlaxError)
    assert issubclass(TensorNotFoundError, KeyError)          # `except KeyError` keeps working
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


# ---------------------------------------------------------------------------------------------
# Unknown tensor names
# ---------------------------------------------------------------------------------------------

def test_unknown_tensor_name_mentions_close_names(tf1_ckpt):
    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    with pytest.raises(TensorNotFoundError) as info:
        ckpt.read("dense/kernal")
    assert "dense/kernel" in str(info.value)
    assert "dense/kernal" in str(info.value)
    for call in (ckpt.shape, ckpt.dtype):
        with pytest.raises(TensorNotFoundError):
            call("dense/kernal")
    assert "dense/kernal" not in ckpt
    with pytest.raises(TensorNotFoundError) as info:
        ckpt.read("part/rows/part_0")       # graph-side partition names are not checkpoint keys
    assert "part/rows" in str(info.value)
    with pytest.raises(TensorNotFoundError):
        ckpt.read("part")                    # a scope is not a tensor
    with pytest.raises(TensorNotFoundError):
        ckpt.read("")                        # the header key is not a tensor
    with pytest.raises(TensorNotFoundError) as info:
        tf2flax.load_variable(tf1_ckpt.prefix, "cpu1/countr")
    assert "cpu1/counter" in str(info.value)
    with pytest.raises(KeyError):
        ckpt.read("nope")


def test_slice_keys_are_not_tensor_names(tf1_ckpt):
    from tf2flax.formats.table import parse_table

    ckpt = tf2flax.open_checkpoint(tf1_ckpt.prefix)
    slice_keys = [k for k, _ in parse_table(Path(tf1_ckpt.prefix + ".index").read_bytes())
                  if k.startswith(b"\x00")]
    assert slice_keys
    for key in slice_keys:
        as_text = key.decode("utf-8", "surrogateescape")
        assert as_text not in ckpt
        with pytest.raises(TensorNotFoundError):
            ckpt.read(as_text)


# ---------------------------------------------------------------------------------------------
# Unsupported formats and features
# ---------------------------------------------------------------------------------------------

def _assert_reads_as_tf(path, reference_path) -> None:
    expected = tf_writers.tf_v1_read_all(reference_path)
    ckpt = tf2flax.open_checkpoint(path)
    assert sorted(ckpt.names) == sorted(expected)
    for name, value in expected.items():
        assert tf_writers.tensor_mismatch(ckpt.read(name), value) is None, name


def test_v1_checkpoint_prefix_reads_exactly(v1_ckpt):
    assert os.path.isfile(v1_ckpt.prefix) and not os.path.exists(v1_ckpt.prefix + ".index")
    _assert_reads_as_tf(v1_ckpt.prefix, v1_ckpt.prefix)


def test_v1_checkpoint_directory_reads_exactly(v1_ckpt):
    """The state file of a V1 Saver points at the V1 file."""
    _assert_reads_as_tf(v1_ckpt.directory, v1_ckpt.prefix)


def test_sharded_v1_checkpoint_directory_reads_exactly(tmp_path):
    prefix = tf_writers.write_v1(tmp_path, sharded=True)
    assert sorted(p.name for p in tmp_path.iterdir() if "-of-" in p.name) == [
        "model-00000-of-00002", "model-00001-of-00002"]
    _assert_reads_as_tf(tmp_path, prefix)
    _assert_reads_as_tf(tmp_path / "model-00000-of-00002", prefix)


def test_snappy_compressed_index_reads_exactly(small, tmp_path):
    from tf2flax.formats.table import parse_table

    prefix = copy_prefix(small["prefix"], tmp_path)
    entries = parse_table(small["index"])
    Path(prefix + ".index").write_bytes(build_table(entries, compression=1))
    expected = tf_writers.tf_read_all(prefix)
    ckpt = tf2flax.open_checkpoint(prefix)
    for name, value in expected.items():
        assert tf_writers.tensor_mismatch(ckpt.read(name), value) is None, name


def test_variant_tensor_does_not_block_the_rest(tmp_path):
    """A tf.data iterator saved in a TF2 checkpoint is a DT_VARIANT tensor: refuse *it*, read the rest."""
    prefix = tf_writers.write_with_iterator(tmp_path)
    expected = tf_writers.tf_list_variables(prefix)
    assert any(name.endswith("ITERATOR_STATE") for name, _ in expected)
    ckpt = tf2flax.open_checkpoint(prefix)
    assert ckpt.list_variables() == expected
    np.testing.assert_array_equal(ckpt.read("v" + VALUE_SUFFIX), np.arange(4, dtype=np.float32))
    with pytest.raises(UnsupportedFormatError):
        ckpt.read("iterator/.ATTRIBUTES/ITERATOR_STATE")


# ---------------------------------------------------------------------------------------------
# Crafted damage: an index with valid CRCs but impossible contents
# ---------------------------------------------------------------------------------------------

def _rewrite_index(prefix, edit, rekey=None):
    """Parse the index, let ``edit(name, proto)`` change entries (return None to drop), rebuild.

    ``rekey`` maps old keys to new ones (the entries are re-sorted).
    """
    from tensorflow.core.protobuf import tensor_bundle_pb2
    from tf2flax.formats.table import parse_table

    path = Path(prefix + ".index")
    out = []
    for key, value in parse_table(path.read_bytes()):
        proto = (tensor_bundle_pb2.BundleHeaderProto() if key == b""
                 else tensor_bundle_pb2.BundleEntryProto())
        proto.ParseFromString(value)
        proto = edit(key, proto)
        if proto is not None:
            out.append(((rekey or {}).get(key, key), proto.SerializeToString()))
    path.write_bytes(build_table(sorted(out), 1 << 18))


def _crafted(tf1_ckpt, tmp_path, edit):
    prefix = copy_prefix(tf1_ckpt.prefix, tmp_path)
    _rewrite_index(prefix, edit)
    return prefix


def _edit_named(target, change):
    def edit(key, proto):
        if key == target.encode():
            return change(proto)
        return proto
    return edit


def test_rebuilt_index_is_still_readable(tf1_ckpt, tmp_path):
    """Guard for the crafted-damage tests: an unchanged rebuild must read like the original."""
    prefix = _crafted(tf1_ckpt, tmp_path, lambda key, proto: proto)
    assert Path(prefix + ".index").read_bytes() == Path(tf1_ckpt.prefix + ".index").read_bytes()
    got = open_and_read(prefix)
    for name, value in tf1_ckpt.expected.items():
        assert_tensor_equal(got[name], value, name)


def _set(field, value):
    def change(proto):
        setattr(proto, field, value)
        return proto
    return change


@pytest.mark.parametrize("field,value", [("offset", 10 ** 9), ("offset", 2 ** 62), ("size", 100),
                                         ("shard_id", 2), ("shard_id", -1), ("offset", -8)])
def test_entry_pointing_outside_the_data(tf1_ckpt, tmp_path, field, value):
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_named("dense/kernel", _set(field, value)))
    expect_error(CorruptCheckpointError, prefix)


def test_entry_with_wrong_string_size(tf1_ckpt, tmp_path):
    def change(proto):
        proto.size -= 3
        return proto
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_named("cpu1/names", change))
    expect_error(CorruptCheckpointError, prefix, verify_checksums=False)


def test_entry_with_negative_dimension(tf1_ckpt, tmp_path):
    def change(proto):
        proto.shape.dim[0].size = -4
        return proto
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_named("dense/kernel", change))
    expect_error(CorruptCheckpointError, prefix)


def test_entry_with_unknown_dtype(tf1_ckpt, tmp_path):
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_named("dense/kernel", _set("dtype", 1000)))
    expect_error(Tf2FlaxError, prefix)


def test_header_with_no_shards(tf1_ckpt, tmp_path):
    prefix = _crafted(tf1_ckpt, tmp_path, lambda k, p: _set("num_shards", 0)(p) if k == b"" else p)
    expect_error(CorruptCheckpointError, prefix)


def test_header_from_the_future(tf1_ckpt, tmp_path):
    def edit(key, proto):
        if key == b"":
            proto.version.min_consumer = 7
        return proto
    prefix = _crafted(tf1_ckpt, tmp_path, edit)
    expect_error(UnsupportedFormatError, prefix)


def _edit_slices(name, change):
    def edit(key, proto):
        if key == name.encode():
            change(proto.slices)
        return proto
    return edit


def test_partitioned_variable_missing_a_slice(tf1_ckpt, tmp_path):
    """Slices that do not cover the tensor: TF says 'Does not have sufficient slices'."""
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_slices("part/rows", lambda s: s.pop()))
    expect_error(CorruptCheckpointError, prefix)


def test_partitioned_variable_with_overlapping_slices(tf1_ckpt, tmp_path):
    """Slices (0,4), (4,3), (4,3) add up to 10 rows but never cover rows 7..9: must not read garbage."""
    def change(slices):
        assert [e.start for e in slices[2].extent] == [7, 0]
        slices[2].CopyFrom(slices[1])
    prefix = _crafted(tf1_ckpt, tmp_path, _edit_slices("part/rows", change))
    expect_error(CorruptCheckpointError, prefix)


def test_partitioned_variable_with_overlapping_slices_and_a_gap(tf1_ckpt, tmp_path):
    """Slices (0,4), (4,3), (3,3): element counts add up to the full 10 rows, but rows 7..9 are
    never written (TF's TensorSliceSet refuses overlapping slices). Must raise, not return garbage."""
    from tf2flax.formats.slice_key import encode_slice_key

    old_key = encode_slice_key("part/rows", ((7, 3), (0, 3)))
    new_key = encode_slice_key("part/rows", ((3, 3), (0, 3)))

    def edit(key, proto):
        if key == b"part/rows":
            assert [e.start for e in proto.slices[2].extent] == [7, 0]
            proto.slices[2].extent[0].start = 3
        return proto

    prefix = copy_prefix(tf1_ckpt.prefix, tmp_path)
    _rewrite_index(prefix, edit, rekey={old_key: new_key})
    with pytest.raises(Exception, match="Overlapping slices"):   # TensorFlow refuses it too
        tf_writers.tf().train.load_checkpoint(prefix).get_tensor("part/rows")
    expect_error(CorruptCheckpointError, prefix)


def test_partitioned_variable_slice_data_missing(tf1_ckpt, tmp_path):
    from tf2flax.formats.slice_key import encode_slice_key

    victim = encode_slice_key("part/cols", ((0, 4), (3, 2)))

    def edit(key, proto):
        return None if key == victim else proto
    prefix = _crafted(tf1_ckpt, tmp_path, edit)
    assert Path(prefix + ".index").read_bytes() != Path(tf1_ckpt.prefix + ".index").read_bytes()
    expect_error(CorruptCheckpointError, prefix)


def test_slice_stored_with_the_wrong_shape(tf1_ckpt, tmp_path):
    from tf2flax.formats.slice_key import encode_slice_key

    victim = encode_slice_key("part/vec", ((4, 3),))

    def edit(key, proto):
        if key == victim:
            proto.shape.dim[0].size = 2
            proto.size = 16
        return proto
    prefix = _crafted(tf1_ckpt, tmp_path, edit)
    expect_error(CorruptCheckpointError, prefix)

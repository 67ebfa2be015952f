"""Local reads from mapped data files: views where they can be, copies where they must, and what
happens when a file changes under an open checkpoint (docs/performance.md, "Mapped files").

Checkpoints are written by TensorFlow's SaveV2; TensorFlow's reader gives the expected values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import tf2flax
import tf_writers
from tf2flax.formats.coding import crc32c, crc32c_combine, crc32c_parallel
from tf2flax.errors import CorruptCheckpointError


def _values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a_big": rng.standard_normal((3000, 1024)).astype(np.float32),  # 12 MB: CRC on several cores
        "b_odd": rng.integers(0, 255, size=(3,), dtype=np.uint8),      # leaves the tensors after it unaligned
        "c_rows": rng.standard_normal((16, 10)).astype(np.float32),
        "d_i64": rng.integers(-9, 9, size=(5, 3), dtype=np.int64),
    }


def _write(directory: Path, seed: int) -> str:
    return tf_writers.write_raw_bundle(directory / "ckpt", _values(seed))


@pytest.fixture
def written(tmp_path) -> str:
    return _write(tmp_path / "w", seed=1)


def _data_file(prefix: str) -> str:
    return prefix + ".data-00000-of-00001"


def test_whole_reads_are_read_only_views_equal_to_tensorflow(written):
    expected = tf_writers.tf_read_all(written)
    with tf2flax.open_checkpoint(written) as ckpt:
        for name, value in expected.items():
            got = ckpt.read(name)
            tf_writers.assert_tensor_equal(got, value, name)
        big = ckpt.read("a_big")
        assert not big.flags.writeable and not big.flags.owndata   # a view of the mapping, no copy
        with pytest.raises(ValueError, match="read-only"):
            big[0, 0] = 1.0
    assert tf_writers.tf_read_all(written)["a_big"][0, 0] == expected["a_big"][0, 0]   # the file is untouched


def test_unaligned_tensors_are_copied_aligned(written):
    with tf2flax.open_checkpoint(written) as ckpt:
        offsets = {n: ckpt.info(n).stored.offset for n in ckpt.names}
        unaligned = [n for n in ckpt.names if offsets[n] % ckpt.dtype(n).alignment]
        assert unaligned, offsets   # the 3-byte tensor puts the ones after it off their alignment
        expected = tf_writers.tf_read_all(written)
        for name in unaligned:
            got = ckpt.read(name)
            assert got.flags.aligned and got.flags.owndata
            tf_writers.assert_tensor_equal(got, expected[name], name)
            tf_writers.assert_tensor_equal(ckpt.read(name, (slice(1, 3),)), expected[name][1:3], name)


def test_region_reads_are_views_of_just_the_region(written):
    expected = tf_writers.tf_read_all(written)["a_big"]
    with tf2flax.open_checkpoint(written) as ckpt:
        before = ckpt.stats.bytes_read
        block = ckpt.read("a_big", (slice(10, 20), slice(512, 1024)))
        assert np.array_equal(block, expected[10:20, 512:1024])
        assert ckpt.stats.bytes_read - before == block.nbytes
        assert not block.flags.owndata and not block.flags.writeable


def test_mmap_false_reads_owned_writable_arrays(written):
    expected = tf_writers.tf_read_all(written)
    with tf2flax.open_checkpoint(written, mmap=False) as ckpt:
        for name, value in expected.items():
            got = ckpt.read(name)
            assert got.flags.writeable
            tf_writers.assert_tensor_equal(got, value, name)


def test_load_variable_returns_an_array_of_its_own(written):
    got = tf2flax.load_variable(written, "a_big")
    got[0, 0] = 123.0   # as tf.train.load_variable's result, it may be written to
    assert tf2flax.load_variable(written, "a_big")[0, 0] != 123.0


def test_corruption_is_found_by_the_parallel_checksum(tmp_path):
    prefix = _write(tmp_path / "c", seed=2)
    with tf2flax.open_checkpoint(prefix) as ckpt:
        offset = ckpt.info("a_big").stored.offset
    with open(_data_file(prefix), "r+b") as f:   # one flipped bit deep in the second half
        f.seek(offset + 9_000_000)
        byte = f.read(1)
        f.seek(offset + 9_000_000)
        f.write(bytes([byte[0] ^ 0x10]))
    with tf2flax.open_checkpoint(prefix) as ckpt:
        with pytest.raises(CorruptCheckpointError, match=r"a_big.*CRC32C"):
            ckpt.read("a_big")


# ---- files that change under an open checkpoint -------------------------------------------------

def test_checkpoint_rewritten_by_tensorflow_keeps_open_views_and_reads_exact(tmp_path):
    """TensorFlow writes a new file and renames it over the old: the open mapping keeps the old one."""
    prefix = _write(tmp_path / "r", seed=3)
    old = tf_writers.tf_read_all(prefix)
    with tf2flax.open_checkpoint(prefix) as ckpt:
        held = ckpt.read("a_big")
        _write(tmp_path / "r", seed=4)   # same prefix, new values
        assert not np.array_equal(tf_writers.tf_read_all(prefix)["a_big"], old["a_big"])
        assert np.array_equal(held, old["a_big"])
        for name, value in old.items():   # still the checkpoint that was opened, CRC-verified
            tf_writers.assert_tensor_equal(ckpt.read(name), value, name)


def test_file_rewritten_in_place_leaves_mmap_false_arrays_and_loaded_params_alone(tmp_path):
    import jax

    prefix = _write(tmp_path / "p", seed=5)
    old = tf_writers.tf_read_all(prefix)["a_big"]
    owned_ckpt = tf2flax.open_checkpoint(prefix, mmap=False)
    owned = owned_ckpt.read("a_big")
    params = tf2flax.init_params(prefix, {"a_big": "w"}, {"w": jax.ShapeDtypeStruct(old.shape, np.float32)},
                                 progress=False)
    with tf2flax.open_checkpoint(prefix) as ckpt:
        offset = ckpt.info("a_big").stored.offset
    with open(_data_file(prefix), "r+b") as f:   # overwrite the tensor's bytes where they are
        f.seek(offset)
        f.write(np.full(old.shape, 7.0, np.float32).tobytes())
    assert np.array_equal(owned, old)
    assert np.array_equal(np.asarray(params["w"]), old)
    with tf2flax.open_checkpoint(prefix) as ckpt:   # a fresh read checks the CRC and refuses the new bytes
        with pytest.raises(CorruptCheckpointError, match="CRC32C"):
            ckpt.read("a_big")
    owned_ckpt.close()


def test_file_truncated_before_its_first_read_is_a_clean_error(tmp_path):
    prefix = _write(tmp_path / "t", seed=6)
    ckpt = tf2flax.open_checkpoint(prefix)
    size = os.path.getsize(_data_file(prefix))
    os.truncate(_data_file(prefix), size // 2)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ckpt.read("d_i64")
    ckpt.close()


_TRUNCATE_AFTER_MAPPING = """
import os, sys
import numpy as np
import tf2flax
from tf2flax.errors import CorruptCheckpointError

prefix, data = sys.argv[1], sys.argv[2]
ckpt = tf2flax.open_checkpoint(prefix)
first = ckpt.read("d_i64").copy()   # maps the whole data file
offset = ckpt.info("a_big").stored.offset
os.truncate(data, offset + 1_000_000)   # a_big and everything after it half gone, under the mapping
outcomes = []
for what, read in [("whole", lambda: ckpt.read("a_big")), ("rows", lambda: list(ckpt.read_rows("a_big"))),
                   ("region", lambda: ckpt.read("a_big", (slice(2000, 2010),))),
                   ("after", lambda: ckpt.read("c_rows"))]:
    try:
        read()
        outcomes.append(what + ": read")
    except CorruptCheckpointError as e:
        outcomes.append(what + ": " + ("truncated" if "truncated" in str(e) else str(e)))
print("|".join(outcomes))
"""


def test_file_truncated_under_a_mapping_is_a_clean_error_not_sigbus(tmp_path):
    """docs/performance.md: a file truncated under an open checkpoint gives CorruptCheckpointError.

    In a fresh interpreter, so that a SIGBUS (the mapping read past the file's new end) is a failed
    test, not a dead test run.
    """
    prefix = _write(tmp_path / "tm", seed=9)
    run = subprocess.run([sys.executable, "-c", _TRUNCATE_AFTER_MAPPING, prefix, _data_file(prefix)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert run.returncode == 0, f"died with status {run.returncode} (-7 is SIGBUS): {run.stderr[-2000:]}"
    assert run.stdout.strip() == "whole: truncated|rows: truncated|region: truncated|after: truncated", run.stdout


def test_views_outlive_close_and_deleted_files(tmp_path):
    prefix = _write(tmp_path / "d", seed=7)
    expected = tf_writers.tf_read_all(prefix)["c_rows"]
    ckpt = tf2flax.open_checkpoint(prefix)
    held = ckpt.read("c_rows")
    ckpt.close()
    shutil.rmtree(tmp_path / "d")
    assert np.array_equal(held, expected)


# ---- the checksum on several cores --------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32c_combine_matches_the_checksum_of_the_concatenation(a, b):
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)


@pytest.mark.parametrize("size", [0, 1, 5 << 20, (17 << 20) + 3])
def test_crc32c_parallel_equals_the_serial_checksum(size):
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    assert crc32c_parallel(data) == crc32c(data)


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def test_release_drops_resident_pages_and_views_read_them_back(written):
    expected = tf_writers.tf_read_all(written)["a_big"]
    with tf2flax.open_checkpoint(written) as ckpt:
        view = ckpt.read("a_big")   # the checksum touched every page
        before = _rss_file()
        ckpt.release("a_big")
        assert before - _rss_file() > view.nbytes // 2
        assert np.array_equal(view, expected)


def test_read_rows_blocks_join_to_tensorflows_values(written):
    expected = tf_writers.tf_read_all(written)
    with tf2flax.open_checkpoint(written) as ckpt:
        for name, value in expected.items():
            blocks = list(ckpt.read_rows(name, chunk_bytes=64 << 10))
            assert [first for first, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks[:-1]]))
            tf_writers.assert_tensor_equal(np.concatenate([b for _, b in blocks]), value, name)
        assert len(list(ckpt.read_rows("a_big", chunk_bytes=64 << 10))) == -(-3000 // 16)   # 16 rows of 4 KB


def test_read_rows_and_init_params_refuse_a_corrupted_tensor(tmp_path):
    import jax

    prefix = _write(tmp_path / "rc", seed=8)
    with tf2flax.open_checkpoint(prefix) as ckpt:
        offset = ckpt.info("a_big").stored.offset
    with open(_data_file(prefix), "r+b") as f:
        f.seek(offset + 5_000_000)
        f.write(b"\x00\x01\x02\x03")
    with tf2flax.open_checkpoint(prefix) as ckpt:
        with pytest.raises(CorruptCheckpointError, match=r"a_big.*CRC32C"):
            for _ in ckpt.read_rows("a_big"):
                pass
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    target = jax.ShapeDtypeStruct((3000, 1024), np.float32,
                                  sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x", "y")))
    with pytest.raises(CorruptCheckpointError, match=r"a_big.*CRC32C"):
        tf2flax.init_params(prefix, {"a_big": "w"}, {"w": target}, progress=False)

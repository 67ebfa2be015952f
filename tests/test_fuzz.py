"""Property-based fuzzing of the two hand-written decoders: the table parser and slice keys.

``tf2flax.formats.table.parse_table(data, verify_checksums=True) -> [(key, value)]`` and
``tf2flax.formats.slice_key.{encode,decode}_slice_key``. Internally they raise
``tf2flax.formats.coding.DecodeError`` (a ValueError) which the reader turns into
CorruptCheckpointError; either is accepted here, anything else (IndexError, struct.error,
UnicodeDecodeError, StopIteration, ...) is a bug. Tables are built by ``tf_writers.build_table``,
which writes byte-identical copies of TensorFlow's ``.index`` files (checked below).
"""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import tf2flax
import tf_writers
from tf2flax.formats.coding import DecodeError
from tf2flax.formats.slice_key import decode_slice_key, encode_slice_key
from tf2flax.formats.table import parse_table
from tf2flax.errors import CorruptCheckpointError
from tf_writers import build_table

ACCEPTED = (DecodeError, CorruptCheckpointError)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def entries_strategy(max_size=60):
    kv = st.dictionaries(st.binary(max_size=40), st.binary(max_size=300), max_size=max_size)
    return kv.map(lambda d: sorted(d.items()))


def check_entries(result):
    assert isinstance(result, list)
    for key, value in result:
        assert type(key) is bytes and type(value) is bytes
    keys = [k for k, _ in result]
    assert keys == sorted(set(keys)), "keys must come out strictly increasing"


def parse_or_reject(data, verify=True):
    """parse_table's result, or None if it rejected the bytes the allowed way."""
    try:
        result = parse_table(data, verify_checksums=verify)
    except ACCEPTED:
        return None
    check_entries(result)
    return result


# ---------------------------------------------------------------------------------------------
# Table parser
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt", "zoo_ckpt", "keras3_ckpt", "many_ckpt"])
def test_table_builder_is_byte_identical_to_tensorflow(which, request):
    """Guards the fuzz inputs below (and parse_table on real files): parse + rebuild == TF's bytes."""
    index = Path(request.getfixturevalue(which).prefix + ".index").read_bytes()
    entries = parse_table(index)
    check_entries(entries)
    assert entries[0][0] == b""
    assert build_table(entries, 1 << 18) == index


@FUZZ
@given(entries=entries_strategy(), block_size=st.sampled_from([1, 64, 512, 4096, 1 << 18]))
def test_parse_table_round_trip(entries, block_size):
    assert parse_table(build_table(entries, block_size)) == entries
    assert parse_table(build_table(entries, block_size), verify_checksums=False) == entries


@FUZZ
@given(data=st.binary(max_size=2000), verify=st.booleans())
@example(data=b"", verify=True)
@example(data=b"\x00" * 48, verify=True)
@example(data=b"\x00" * 40 + tf_writers.TABLE_MAGIC.to_bytes(8, "little"), verify=False)
@example(data=b"\xff" * 40 + tf_writers.TABLE_MAGIC.to_bytes(8, "little"), verify=False)
def test_parse_table_random_bytes(data, verify):
    parse_or_reject(data, verify)


@FUZZ
@given(data=st.binary(max_size=300), handles=st.lists(st.integers(0, 400), min_size=4, max_size=4),
       verify=st.booleans())
def test_parse_table_random_bytes_with_plausible_footer(data, handles, verify):
    footer = b"".join(tf_writers._varint(h) for h in handles)
    footer += b"\x00" * (40 - len(footer)) + tf_writers.TABLE_MAGIC.to_bytes(8, "little")
    parse_or_reject(data + footer, verify)


def _mutate(table: bytes, draw) -> bytes:
    out = bytearray(table)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "zero"]))
        if not out:
            break
        pos = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        else:
            n = draw(st.integers(1, 16))
            out[pos:pos + n] = bytes(len(out[pos:pos + n]))
    return bytes(out)


@FUZZ
@given(entries=entries_strategy(30), block_size=st.sampled_from([64, 4096]), data=st.data())
def test_parse_table_mutated_with_checksums(entries, block_size, data):
    """CRCs protect every block: a mutated table is rejected or parses to the original entries.

    The footer's block handles are not covered by any CRC, so damage there can make the index
    handle point at another valid block (e.g. the empty metaindex block: zero entries). What comes
    out must then still be original entries, never invented ones; the reader rejects an index
    without its header entry.
    """
    table = build_table(entries, block_size)
    mutated = _mutate(table, data.draw)
    assume(mutated != table)
    result = parse_or_reject(mutated, verify=True)
    assert result is None or result == entries or set(result) <= set(entries)


@FUZZ
@given(entries=entries_strategy(30), block_size=st.sampled_from([64, 4096]), data=st.data())
def test_parse_table_mutated_without_checksums(entries, block_size, data):
    """Without CRCs anything may come out, but only as well-formed entries or an allowed error."""
    mutated = _mutate(build_table(entries, block_size), data.draw)
    parse_or_reject(mutated, verify=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_parse_table_mutated_tensorflow_index(data, tf1_ckpt, tmp_path):
    """Mutations of a real TF-written index (the TF1 Saver checkpoint with slice keys).

    Whenever parse_table returns something other than the original entries, opening the
    checkpoint with that index must raise CorruptCheckpointError.
    """
    index = Path(tf1_ckpt.prefix + ".index").read_bytes()
    entries = parse_table(index)
    mutated = _mutate(index, data.draw)
    assume(mutated != index)
    result = parse_or_reject(mutated, verify=True)
    assert result is None or result == entries or set(result) <= set(entries)
    if result is not None and result != entries:
        prefix = tmp_path / "model-7"
        (tmp_path / "model-7.index").write_bytes(mutated)
        with pytest.raises(CorruptCheckpointError):
            tf2flax.open_checkpoint(prefix)


# ---------------------------------------------------------------------------------------------
# Slice keys (OrderedCode)
# ---------------------------------------------------------------------------------------------

extents_strategy = st.lists(
    st.one_of(st.tuples(st.integers(0, 2 ** 63 - 1), st.integers(-1, 2 ** 63 - 1)),
              st.tuples(INT64, INT64),
              st.tuples(st.integers(0, 300), st.integers(-1, 300))),
    max_size=8).map(tuple)
name_strategy = st.one_of(st.text(max_size=40), st.text(alphabet="\x00\x01\xff/a.\u00ff", max_size=12))


def test_slice_key_known_bytes():
    # observed in a TF-written file: rows 4..6 of a [10, 3] tensor named "part"
    assert encode_slice_key("part", ((4, 3), (0, 3))) == b"\x00part\x00\x01\x01\x02\x84\x83\x80\x83"
    assert decode_slice_key(b"\x00part\x00\x01\x01\x02\x84\x83\x80\x83") == ("part", ((4, 3), (0, 3)))
    # a whole dimension is (0, -1): 80 7f
    assert encode_slice_key("v", ((0, -1),)) == b"\x00v\x00\x01\x01\x01\x80\x7f"
    # NUL and 0xFF in the name are escaped
    assert encode_slice_key("a\x00b", ()) == b"\x00a\x00\xffb\x00\x01\x00"
    assert encode_slice_key("\u00ff", ()) == b"\x00\xc3\xbf\x00\x01\x00"   # UTF-8 never holds 0xFF
    assert encode_slice_key("", ()) == b"\x00\x00\x01\x00"


@pytest.mark.parametrize("value,encoded", [
    (0, "80"), (5, "85"), (63, "bf"), (-1, "7f"), (-64, "40"), (64, "c040"), (100, "c064"),
    (-65, "3fbf"), (8191, "dfff"), (8192, "e02000"), (-8193, "1fdfff"),
    (2 ** 63 - 1, "ffc07fffffffffffffff"), (-(2 ** 63), "003f8000000000000000"),
    (2 ** 55, "ff8080000000000000"), (2 ** 48, "ff01000000000000"),
])
def test_signed_num_increasing_known_bytes(value, encoded):
    key = encode_slice_key("", ((value, -1),))
    assert key[:5] == b"\x00\x00\x01\x01\x01" and key[-1:] == b"\x7f"
    assert key[5:-1].hex() == encoded
    assert decode_slice_key(key) == ("", ((value, -1),))


@FUZZ
@given(name=name_strategy, extents=extents_strategy)
def test_slice_key_round_trip(name, extents):
    key = encode_slice_key(name, extents)
    assert type(key) is bytes and key[:1] == b"\x00"
    assert decode_slice_key(key) == (name, extents)


@FUZZ
@given(name=name_strategy, a=extents_strategy, b=extents_strategy)
def test_slice_keys_sort_like_their_extents(name, a, b):
    """OrderedCode preserves order: same name and rank -> key order == extent tuple order."""
    assume(len(a) == len(b))
    ka, kb = encode_slice_key(name, a), encode_slice_key(name, b)
    assert (ka < kb) == (a < b) and (ka == kb) == (a == b)


@FUZZ
@given(a=name_strategy, b=name_strategy, extents=extents_strategy)
def test_slice_keys_sort_like_their_names(a, b, extents):
    ka, kb = encode_slice_key(a, extents), encode_slice_key(b, extents)
    ea, eb = a.encode(), b.encode()
    assert (ka < kb) == (ea < eb) and (ka == kb) == (ea == eb)


@FUZZ
@given(key=st.binary(max_size=60))
@example(key=b"")
@example(key=b"\x00")
@example(key=b"\x00a\x00\x01\x01\x01")
@example(key=b"\x00a\x00\x01\x01\x01\xff")
@example(key=b"\x00a\x00\x01\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
@example(key=b"\x00a\x00\x01\x09\x01")
@example(key=b"\x00\xc3\x28\x00\x01\x00")
def test_decode_slice_key_random_bytes(key):
    try:
        name, extents = decode_slice_key(key)
    except ACCEPTED:
        return
    assert isinstance(name, str) and isinstance(extents, tuple)
    assert all(isinstance(s, int) and isinstance(n, int) for s, n in extents)
    # whatever decodes must encode back to a key that decodes the same way
    assert decode_slice_key(encode_slice_key(name, extents)) == (name, extents)


@FUZZ
@given(name=name_strategy, extents=extents_strategy, data=st.data())
def test_decode_slice_key_mutated(name, extents, data):
    key = bytearray(encode_slice_key(name, extents))
    pos = data.draw(st.integers(0, len(key) - 1))
    key[pos] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(key)))
    try:
        decode_slice_key(bytes(key[:cut]))
    except ACCEPTED:
        pass


@pytest.mark.parametrize("which", ["tf1_ckpt", "tf2_ckpt"])
def test_tensorflow_slice_keys_decode_and_reencode(which, request):
    written = request.getfixturevalue(which)
    ckpt = tf2flax.open_checkpoint(written.prefix)
    shapes = dict(ckpt.list_variables())
    keys = [k for k, _ in parse_table(Path(written.prefix + ".index").read_bytes()) if k[:1] == b"\x00"]
    assert len(keys) >= 4
    for key in keys:
        name, extents = decode_slice_key(key)
        assert encode_slice_key(name, extents) == key
        assert name in shapes
        assert len(extents) == len(shapes[name])
        for (start, length), dim in zip(extents, shapes[name]):
            assert 0 <= start and (length == -1 or start + length <= dim)

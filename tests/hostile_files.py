"""Small hostile checkpoint files, written byte by byte, and a memory/time probe to open them with.

Each ``write_*`` returns a checkpoint prefix whose ``.index`` is a few KB to a few hundred KB but
which a naive reader expands into gigabytes. ``probe`` runs a snippet in a fresh interpreter under an
address-space limit and reports the peak memory it added, so a regression fails the test instead of
eating the machine.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import crc32c

from tf2flax.formats.protos import BundleEntryProto, BundleHeaderProto, TrackableObjectGraph
from tf2flax.formats.slice_key import encode_slice_key
from tf_writers import TABLE_MAGIC, _block, _varint, build_table, masked_crc32c

DT_FLOAT, DT_STRING = 1, 7


def entry(dtype: int, shape, offset: int = 0, size: int | None = None, crc: int = 0, slices=()) -> bytes:
    """A serialized BundleEntryProto (``size`` defaults to what ``shape`` of float32 needs)."""
    proto = BundleEntryProto(dtype=dtype, offset=offset, crc32c=crc)
    for d in shape:
        proto.shape.dim.add(size=d)
    n = 1
    for d in shape:
        n *= d
    proto.size = 4 * n if size is None else size
    for extents in slices:
        s = proto.slices.add()
        for start, length in extents:
            e = s.extent.add(start=start)
            if length != -1:
                e.length = length
    return proto.SerializeToString()


def header() -> bytes:
    proto = BundleHeaderProto(num_shards=1)
    proto.version.producer = 1
    return proto.SerializeToString()


def write_bundle(prefix: Path, entries: dict[bytes, bytes], data: bytes = b"", index: bytes | None = None) -> str:
    """Write ``prefix.index`` (from ``entries``, plus the header; or the raw ``index``) and one data file."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if index is None:
        index = build_table(sorted({b"": header(), **entries}.items()), 1 << 18)
    (prefix.parent / (prefix.name + ".index")).write_bytes(index)
    (prefix.parent / (prefix.name + ".data-00000-of-00001")).write_bytes(data)
    return str(prefix)


def raw_table(block: bytes, compression: int = 0) -> bytes:
    """A table file with one data block holding ``block`` as it is (entries, restarts, count), stored
    as is or (``compression=1``) snappy-compressed."""
    out = bytearray()

    def put(data: bytes, kind: int = 0) -> bytes:
        if kind == 1:
            import cramjam

            data = bytes(cramjam.snappy.compress_raw(data))
        handle = _varint(len(out)) + _varint(len(data))
        trailer = bytes([kind])
        out.extend(data + trailer + masked_crc32c(data + trailer).to_bytes(4, "little"))
        return handle

    data_handle = put(block, compression)
    meta = put(_block([], 16))
    index = put(_block([(b"\xff" * 8, data_handle)], 1))
    footer = meta + index
    return bytes(out + footer + b"\x00" * (40 - len(footer)) + TABLE_MAGIC.to_bytes(8, "little"))


def string_tensor(value: bytes) -> tuple[bytes, bytes]:
    """(entry, data) of a scalar DT_STRING tensor at offset 0, with valid checksums."""
    length = _varint(len(value))
    length_crc = masked_crc32c(len(value).to_bytes(4, "little")).to_bytes(4, "little")
    data = length + length_crc + value
    crc = crc32c.crc32c(value, crc32c.crc32c(length_crc, crc32c.crc32c(len(value).to_bytes(4, "little"))))
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return entry(DT_STRING, (), size=len(data), crc=masked), data


# ---- the hostile files -------------------------------------------------------------------------

def write_slice_grid(directory: Path, n: int = 1600) -> str:
    """A sliced [n, n, n] tensor with n one-element slices on the diagonal: a grid of n**3 cells."""
    extents = [((i, 1), (i, 1), (i, 1)) for i in range(n)]
    entries = {b"t": entry(DT_FLOAT, (n, n, n), size=0, slices=extents)}
    for ext in extents:
        entries[encode_slice_key("t", ext)] = entry(DT_FLOAT, (1, 1, 1))
    return write_bundle(directory / "grid", entries, b"\x00" * 4)


def write_string_bomb(directory: Path, n: int = 10 ** 9) -> str:
    """A sliced DT_STRING tensor of n strings whose one slice stores 5 bytes (strings have no size check)."""
    whole = ((0, -1),)
    entries = {b"s": entry(DT_STRING, (n,), size=0, slices=[whole]),
               encode_slice_key("s", whole): entry(DT_STRING, (n,), size=5)}
    return write_bundle(directory / "strings", entries, b"\x00" * 5)


def write_prefix_bomb(directory: Path, n: int = 70000) -> str:
    """An index block of n entries whose keys each extend the previous one by a byte."""
    body = bytearray()
    for i in range(n):
        body += _varint(i) + _varint(1) + _varint(0) + bytes([0x61 + i % 26])
    block = bytes(body) + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    return write_bundle(directory / "keys", {}, index=raw_table(block))


def write_snappy_key_bomb(directory: Path, n: int = 4_000_000, key_len: int = 60) -> str:
    """One snappy block of n entries, each the previous 60-byte key with its last byte replaced: 4
    identical bytes per entry, which snappy stores in about a fifth of a byte. Each entry still
    becomes a 60-byte key, a value and the objects holding them (about 200 bytes): 800x the file."""
    body = bytearray(_varint(0) + _varint(key_len) + _varint(0) + b"k" * key_len)
    body += (_varint(key_len - 1) + _varint(1) + _varint(0) + b"x") * (n - 1)
    block = bytes(body) + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    return write_bundle(directory / "snappy_keys", {}, index=raw_table(block, compression=1))


def write_aliased_slices(directory: Path, n: int = 2000, row: int = 125_000) -> str:
    """A float32 [n, row] tensor saved as n one-row slices whose entries all point at the same
    ``row * 4`` bytes (valid CRCs): a 500 KB data file that a naive reader turns into n * 500 KB."""
    data = bytes(4 * row)
    crc = crc32c.crc32c(data)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    extents = [((i, 1), (0, -1)) for i in range(n)]
    entries = {b"t": entry(DT_FLOAT, (n, row), size=0, slices=extents)}
    for ext in extents:
        entries[encode_slice_key("t", ext)] = entry(DT_FLOAT, (1, row), offset=0, crc=masked)
    return write_bundle(directory / "aliased", entries, data)


def write_path_bomb(directory: Path, chain: int = 1200, width: int = 2, layers: int = 40) -> str:
    """An object graph: a long chain of nodes, then ``layers`` fully connected layers of ``width``.

    Every node of the last layer is reached by width**layers paths, each as long as the chain.
    """
    graph = TrackableObjectGraph()
    nodes = [graph.nodes.add() for _ in range(1 + chain + width * layers)]
    for i in range(chain):
        nodes[i].children.add(node_id=i + 1, local_name=f"c{i % 10}")
    previous = [chain]
    for layer in range(layers):
        ids = [1 + chain + layer * width + k for k in range(width)]
        for p in previous:
            for k, c in enumerate(ids):
                nodes[p].children.add(node_id=c, local_name=f"l{k}")
        previous = ids
    for i, node in enumerate(nodes):
        node.attributes.add(name="VARIABLE_VALUE", full_name=f"v{i}", checkpoint_key=f"k{i}/.ATTRIBUTES/VARIABLE_VALUE")
    value_entry, data = string_tensor(graph.SerializeToString())
    return write_bundle(directory / "graph", {b"_CHECKPOINTABLE_OBJECT_GRAPH": value_entry}, data)


# ---- the probe ---------------------------------------------------------------------------------

_PROBE = """
import json, resource, sys, time, traceback
{setup}
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:  # restart the peak from the current resident size
    f.write("5")
base = hwm()
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + {limit}, hard))
began = time.perf_counter()
try:
{body}
    outcome = {{"error": None}}
except BaseException as e:
    outcome = {{"error": type(e).__module__ + "." + type(e).__name__, "message": str(e)[:2000],
               "tf2flax": isinstance(e, tf2flax.errors.Tf2FlaxError),
               "trace": "" if isinstance(e, tf2flax.errors.Tf2FlaxError) else traceback.format_exc()[-3000:]}}
outcome.update(seconds=time.perf_counter() - began, extra_bytes=hwm() - base)
print("PROBE" + json.dumps(outcome))
"""


def probe(body: str, setup: str = "import tf2flax", limit: int = 1 << 30, timeout: float = 120) -> dict:
    """Run ``body`` in a fresh interpreter after ``setup``, allowed ``limit`` more bytes of address space.

    Returns {"error": exception type or None, "message", "tf2flax": whether a Tf2FlaxError,
    "seconds", "extra_bytes": peak memory added by ``body``}.
    """
    code = _PROBE.format(setup=setup, limit=limit, body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE")]
    assert lines, f"probe died (rc {run.returncode}): {run.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE"):])

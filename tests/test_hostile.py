"""Small hostile inputs cost bounded memory and time, and end in one clear tf2flax error.

The files are written byte by byte (``hostile_files``). Memory is measured in a fresh interpreter
under an address-space limit (``hostile_files.probe``), so a regression fails the test instead of
taking the machine's memory; a subprocess timeout catches hangs (no speed is asserted).
"""

import json
import re

import crc32c
import numpy as np
import pytest

import hostile_files as h
import tf2flax
from tf2flax.formats.base import slices_problem
from tf2flax.cli import main
from tf2flax.errors import MappingError, Tf2FlaxError
from tf2flax.mapping.rules import compile_rules, rename
from tf2flax.plan import Cast

BOUND = 200 << 20  # extra bytes a small hostile file may cost
CORRUPT = "tf2flax.errors.CorruptCheckpointError"


def masked_crc(data: bytes) -> int:
    c = crc32c.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def floats(tmp_path, name="t", n=4, **entries):
    """A checkpoint holding float32 tensor ``name`` = arange(n) (plus raw ``entries``)."""
    data = np.arange(n, dtype=np.float32).tobytes()
    extra = {k.encode(): v for k, v in entries.items()}
    return h.write_bundle(tmp_path / "ckpt", {name.encode(): h.entry(h.DT_FLOAT, (n,), crc=masked_crc(data)),
                                              **extra}, data)


def assert_bounded(result, error=CORRUPT, names=None):
    assert result["error"] == error, result
    assert result["extra_bytes"] < BOUND, result
    if names is not None:
        assert names in result["message"], result


# ---- item 6: small files that expand -----------------------------------------------------------

def test_slice_grid_is_not_materialized(tmp_path):
    """84 KB index, 1600 diagonal slices of a [1600]*3 tensor: was a 1600**3 grid (3.3 GB, 10 s)."""
    prefix = h.write_slice_grid(tmp_path)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r}).info('t')")
    assert_bounded(result, names=prefix + ".index")
    assert "do not cover" in result["message"]


def test_prefix_compressed_keys_are_budgeted(tmp_path):
    """400 KB index whose keys each extend the last by a byte: was 2.5 GB of keys."""
    prefix = h.write_prefix_bomb(tmp_path)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r})")
    assert_bounded(result, names=prefix + ".index")
    assert "expand" in result["message"]


def test_snappy_keys_are_budgeted_against_stored_bytes(tmp_path):
    """751 KB index, one snappy block of 4M 4-byte entries, each a 60-byte key: was 724 MB and 3.2 s
    (the key budget counted the block after decompression, 20x the file)."""
    prefix = h.write_snappy_key_bomb(tmp_path)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r})")
    assert_bounded(result, names=prefix + ".index")
    assert "expand to more than 64x the table's stored bytes" in result["message"]
    assert result["extra_bytes"] < 120 << 20, result


def test_slices_aliasing_one_byte_range_are_refused_before_allocating(tmp_path):
    """83 KB index + 500 KB data: 2000 one-row slices all pointing at the same bytes; was 1 GB allocated."""
    prefix = h.write_aliased_slices(tmp_path)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r}).read('t')")
    assert_bounded(result, names=prefix + ".index: tensor 't'")
    assert "two of its slices share bytes 0..500000 of data shard 0" in result["message"]


def test_remote_claim_beyond_its_file_is_refused_before_allocating(tmp_path):
    """A 200-byte index over HTTP claims a 1 TiB float32 tensor in a 16-byte file: the buffer was
    allocated before any byte was asked for (numpy's MemoryError, a traceback)."""
    from servers import RangeHTTPServer

    h.write_bundle(tmp_path / "ckpt", {b"t": h.entry(h.DT_FLOAT, (2 ** 38,))}, b"\x00" * 16)
    with RangeHTTPServer(tmp_path) as server:
        result = h.probe(f"tf2flax.open_checkpoint({server.url + 'ckpt'!r}).read('t')")
    assert_bounded(result, names=server.url + "ckpt.data-00000-of-00001: bytes 1099511627775..1099511627776 are "
                                              "past the end of the file")
    assert result["message"].endswith("(reading tensor 't')")


def test_large_remote_reads_probe_their_file_once(tmp_path, monkeypatch):
    from servers import RangeHTTPServer
    import tf2flax.formats.v2 as v2

    monkeypatch.setattr(v2, "_PROBE_ABOVE", 1000)
    floats(tmp_path, n=1000)
    with RangeHTTPServer(tmp_path) as server:
        ckpt = tf2flax.open_checkpoint(server.url + "ckpt")
        server.reset()
        np.testing.assert_array_equal(ckpt.read("t"), np.arange(1000, dtype=np.float32))
        np.testing.assert_array_equal(ckpt.read("t", (slice(5, 9),)), np.arange(5, 9, dtype=np.float32))
        data = [r for r in server.log if r.path.endswith(".data-00000-of-00001")]
    assert len(data) == 3, [(r.path, r.range) for r in data]   # one probe, then the two reads


def test_string_tensor_larger_than_its_bytes(tmp_path):
    """A 200-byte index: 10**9 strings in a 5-byte slice; the output array took 8 GB and 85 s."""
    prefix = h.write_string_bomb(tmp_path)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r}).read('s')")
    assert_bounded(result, names=prefix)
    assert "less than one per string" in result["message"]


def test_object_graph_with_exploding_paths(tmp_path):
    """88 KB graph: a 1200-node chain, then 40 layers of 2 fully connected nodes (2**40 paths).

    Enumerating paths took 3.0 GB and 27 s; one breadth-first visit per node needs neither.
    """
    prefix = h.write_path_bomb(tmp_path)
    result = h.probe(f"""
        graph = tf2flax.open_checkpoint({prefix!r}).object_graph
        assert len(graph.variables) == 1281, len(graph.variables)
    """)
    assert_bounded(result, error=None)


def test_object_graph_paths_over_budget_are_an_error(tmp_path):
    """An 8000-node chain: every node's path repeats the chain so far (192 M characters from 558 KB)."""
    prefix = h.write_path_bomb(tmp_path, chain=8000, layers=0)
    result = h.probe(f"tf2flax.open_checkpoint({prefix!r}).object_graph")
    assert_bounded(result, names=prefix)
    assert "object paths add up to" in result["message"]


def test_object_graph_model_paths_are_first_breadth_first_paths(tmp_path):
    prefix = h.write_path_bomb(tmp_path, chain=3, width=2, layers=2)
    graph = tf2flax.open_checkpoint(prefix).object_graph
    by_key = {key.split("/")[0]: v for key, v in graph.by_key().items()}
    # nodes: 0 -> 1 -> 2 -> 3 (chain), then layers {4, 5} and {6, 7}, every node with one attribute
    assert by_key["k3"].model_path == "c0/c1/c2"
    assert by_key["k5"].model_path == "c0/c1/c2/l1"
    assert by_key["k7"].model_path == "c0/c1/c2/l0/l1"
    assert by_key["k0"].is_optimizer and not by_key["k7"].is_optimizer  # the root has no path


def _tiling_problem_by_counting(shape, regions):
    counts = np.zeros(shape, np.int64)
    for r in regions:
        counts[r] += 1
    return None if (counts == 1).all() else ("gap" if (counts == 0).any() else "overlap")


def test_slice_tiling_check_agrees_with_counting_cells():
    """The sweep (no grid) against counting every cell, on random small tilings and near-tilings."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        shape = tuple(int(d) for d in rng.integers(1, 5, size=rng.integers(1, 4)))
        cuts = [sorted({0, d, *rng.integers(0, d + 1, size=2).tolist()}) for d in shape]
        regions = [tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, idx))
                   for idx in np.ndindex(*[len(c) - 1 for c in cuts])]
        if rng.random() < 0.5 and len(regions) > 1:  # damage: move, drop or duplicate a slice
            k = int(rng.integers(len(regions)))
            choice = rng.integers(3)
            if choice == 0:
                regions[k] = tuple(slice(max(s.start - 1, 0), max(s.stop - 1, 1)) for s in regions[k])
            elif choice == 1:
                regions.pop(k)
            else:
                regions.append(regions[k])
        expected = _tiling_problem_by_counting(shape, regions)
        got = slices_problem(shape, regions)
        assert (got is None) == (expected is None), (shape, regions, got)


def test_slice_tiling_check_on_a_grid_of_slices():
    """A 100 x 100 grid of one-element slices tiles its tensor; repeating one slice overlaps."""
    regions = [(slice(i, i + 1), slice(j, j + 1)) for i in range(100) for j in range(100)]
    assert slices_problem((100, 100), regions) is None
    regions[-1] = regions[0]
    assert "overlap" in slices_problem((100, 100), regions)


def test_cast_to_a_sub_array_dtype_allocates_nothing(tmp_path):
    """A map ``cast`` to '(1000,1000)f4' made every element a million floats (4.1 GB)."""
    prefix = floats(tmp_path, n=1000)
    map_file = tmp_path / "map.yaml"
    map_file.write_text('transforms:\n  t: [cast, "(1000,1000)f4"]\n')
    result = h.probe(f"""
        rc = tf2flax.cli.main(["convert", {prefix!r}, {str(tmp_path / "out")!r}, "--quiet", "--map", {str(map_file)!r}])
        assert rc == 2, rc
    """, setup="import tf2flax, tf2flax.cli")
    assert_bounded(result, error=None)


# ---- item 8: internal exceptions become one line, exit 2 ----------------------------------------

@pytest.mark.parametrize("shape,expected", [
    ((2 ** 40,), "needs bytes 0..4398046511104, but the file has 16 bytes"),
    ((1,) * 100, "has rank 100"),
    ((0, 2 ** 62, 2 ** 62), "too large for a numpy array"),
])
def test_impossible_shapes_are_errors(tmp_path, shape, expected):
    size = 4 * int(np.prod(shape, dtype=object))
    data = b"\x00" * 16
    prefix = h.write_bundle(tmp_path / "ckpt", {b"t": h.entry(h.DT_FLOAT, shape, size=size,
                                                              crc=masked_crc(data[:size]))}, data)
    with pytest.raises(Tf2FlaxError, match=re.escape(expected)):
        tf2flax.load_variable(prefix, "t")


@pytest.mark.parametrize("shape,expected", [((2 ** 40,), "needs bytes"), ((1,) * 100, "has rank 100")])
def test_impossible_shapes_in_convert_exit_2(tmp_path, shape, expected, capsys):
    size = 4 * int(np.prod(shape))
    data = b"\x00" * 16
    prefix = h.write_bundle(tmp_path / "ckpt", {b"t": h.entry(h.DT_FLOAT, shape, size=size,
                                                              crc=masked_crc(data[:size]))}, data)
    assert main(["convert", prefix, str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tf2flax: error: ") and expected in err, err


@pytest.mark.parametrize("dtype", ["f4,f4", "M8", "V2000000000", "S100", "(1000,1000)f4", "(f4,(1000,1000))"])
def test_cast_to_a_dtype_that_is_not_one_value_exits_2(tmp_path, dtype, capsys):
    prefix = floats(tmp_path)
    map_file = tmp_path / "map.yaml"
    map_file.write_text(f'transforms:\n  t: [cast, "{dtype}"]\n')
    assert main(["convert", prefix, str(tmp_path / "out"), "--quiet", "--map", str(map_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tf2flax: error: ") and "'t'" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source,dtype", [("float32", "float16"), ("float32", "bfloat16"), ("float32", "int8"),
                                          ("float32", "bool"), ("float32", "complex64"), ("O", "O"), ("O", "S")])
def test_cast_to_one_value_dtypes_is_allowed(source, dtype):
    import ml_dtypes  # noqa: F401  (bfloat16)

    assert Cast(np.dtype(dtype)).out_dtype(np.dtype(source)) == np.dtype(dtype)


# ---- item 9: user regexes run in linear time ---------------------------------------------------

@pytest.mark.parametrize("body", [
    "from tf2flax.mapping.rules import compile_rules, rename\n"
    "assert rename(NAME, compile_rules([(r'^(a+)+$', 'x')])) == NAME",
    "from tf2flax.mapping.transforms import TransformSpecs\n"
    "assert TransformSpecs({r'(a+)+': 'transpose'}, str).find(NAME) is None",
    "import jax\nfrom jax.sharding import PartitionSpec as P\nfrom tf2flax.sharding import resolve_shardings\n"
    "mesh = jax.sharding.Mesh(jax.devices()[:1], ('x',))\n"
    "out = resolve_shardings({NAME: jax.ShapeDtypeStruct((2,), 'float32')}, mesh=mesh, rules=[(r'^(a+)+$', P('x'))])\n"
    "assert out[NAME].spec == P()",
], ids=["rules", "transforms", "sharding_rules"])
def test_catastrophic_regex_on_a_long_name_finishes(body):
    """``^(a+)+$`` backtracks 2**n steps in Python's re on 'a' * n + 'b'; RE2 is linear."""
    result = h.probe("NAME = 'a' * 100_000 + 'b'\n" + body, limit=16 << 30, timeout=60)
    assert result["error"] is None, result


def test_catastrophic_rule_in_a_map_file(tmp_path, capsys):
    prefix = floats(tmp_path, name="a" * 60 + "b")
    map_file = tmp_path / "map.yaml"
    map_file.write_text("rules:\n  - ['^(a+)+$', x]\n")
    result = h.probe(f"""
        assert tf2flax.cli.main(["convert", {prefix!r}, {str(tmp_path / "out")!r}, "--dry-run",
                                 "--map", {str(map_file)!r}]) == 0
    """, setup="import tf2flax, tf2flax.cli", limit=16 << 30, timeout=60)
    assert result["error"] is None, result


def test_python_only_regex_syntax_needs_a_compiled_pattern():
    with pytest.raises(MappingError, match=r"re\.compile"):
        compile_rules([(r"(?<=dense)/kernel", "/w")])
    rules = compile_rules([(re.compile(r"(?<=dense)/kernel"), "/w")])
    assert rename("dense/kernel", rules) == "dense/w"


def test_rules_keep_python_replacement_templates():
    rules = compile_rules([(r"(^|/)gamma$", r"\1scale"), (r"^(?P<x>\w+)/k$", r"\g<x>/kernel"),
                           (r"^up/(.*)$", lambda m: m.group(1).upper())])
    assert [rename(n, rules) for n in ("bn/gamma", "gamma", "d/k", "up/x")] == ["bn/scale", "scale", "d/kernel", "X"]
    with pytest.raises(MappingError, match="fails on"):
        rename("bn/gamma", compile_rules([(r"gamma", r"\5")]))


# ---- item 11: names cannot drive the terminal --------------------------------------------------

def test_ls_escapes_control_characters(tmp_path, capsys):
    evil = "x\n\x1b[31mred\u202e"
    prefix = floats(tmp_path, name=evil)
    assert main(["ls", prefix]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert [line for line in out.splitlines() if "red" in line] == [
        next(line for line in out.splitlines() if line.startswith("x\\n\\x1b[31mred\\u202e "))]
    assert main(["ls", prefix, "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)["tensors"]] == [evil]


def test_dry_run_escapes_control_characters(tmp_path, capsys):
    prefix = floats(tmp_path, name="w\x1b[2J")
    assert main(["convert", prefix, str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "w\\x1b[2J" in out

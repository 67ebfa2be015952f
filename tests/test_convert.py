"""``tf2flax.convert``: TF checkpoints -> Orbax, checked against TensorFlow's own values.

Every round trip restores the output in a fresh process that imports Orbax only (not tf2flax), with
the call the docs give, and compares it bit for bit with what TensorFlow reads from the checkpoint.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import tf_writers
import tf2flax
from tf2flax.errors import MappingError, OutputExistsError

convert_module = importlib.import_module("tf2flax.conversion")
orbax_writer = importlib.import_module("tf2flax.conversion.orbax_writer")
mapfile = importlib.import_module("tf2flax.conversion.mapfile")

RESTORE = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np
    import orbax.checkpoint as ocp
    out, expected_file = sys.argv[1], sys.argv[2]
    params = ocp.v1.load(out)
    legacy = ocp.StandardCheckpointer().restore(f"{out}/state")
    def flat(tree, prefix=""):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}{k}/") if isinstance(v, dict) else [(prefix + k, v)]
    got, got_legacy = dict(flat(params)), dict(flat(legacy))
    with open(expected_file, "rb") as f:
        expected = pickle.load(f)
    def same(a, e):
        return (isinstance(a, np.ndarray) and a.dtype == e.dtype and a.shape == e.shape
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes())
    print(json.dumps({
        "tf2flax_imported": "tf2flax" in sys.modules,
        "missing": sorted(set(expected) - set(got)), "extra": sorted(set(got) - set(expected)),
        "different": sorted(k for k in expected if k in got and not same(got[k], expected[k])),
        "legacy_different": sorted(k for k in expected if k not in got_legacy or not same(got_legacy[k], expected[k])),
    }))
""")


def restore_elsewhere(out: Path, expected: dict[str, np.ndarray], tmp_path: Path) -> dict:
    """Restore ``out`` with Orbax alone in a new process and compare it with ``expected``."""
    expected_file = tmp_path / "expected.pkl"
    expected_file.write_bytes(pickle.dumps(expected))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", RESTORE, str(out), str(expected_file)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_restores_to(out: Path, expected: dict[str, np.ndarray], tmp_path: Path) -> None:
    result = restore_elsewhere(out, expected, tmp_path)
    assert result == {"tf2flax_imported": False, "missing": [], "extra": [], "different": [],
                      "legacy_different": []}


def quiet_convert(*args, **kwargs) -> tf2flax.ConvertResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", convert_module.ConvertWarning)
        return tf2flax.convert(*args, **kwargs)


def tf_values(prefix: str) -> dict[str, np.ndarray]:
    return tf_writers.tf_read_all(prefix)


def test_tf1_partitioned_multishard_round_trip(tf1_ckpt, tmp_path):
    ref = tf_values(tf1_ckpt.prefix)
    out = tmp_path / "tf1-orbax"
    with pytest.warns(convert_module.ConvertWarning, match="string tensor.*cpu1/names"):
        result = tf2flax.convert(tf1_ckpt.prefix, out)
    assert ("cpu1/names", "string tensor") in result.left_out
    expected = {k: v for k, v in ref.items() if v.dtype != object}
    assert result.tensors == len(expected) and result.bytes == sum(v.nbytes for v in expected.values())
    assert_restores_to(out, expected, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["expected.pkl", "tf1-orbax"]  # no temporary leftovers


def test_tf2_sliced_round_trip_uses_object_paths(tf2_ckpt, tmp_path):
    ref = tf_values(tf2_ckpt.prefix)
    out = tmp_path / "tf2-orbax"
    result = quiet_convert(tf2_ckpt.prefix, out)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    expected = {k.removesuffix(suffix): v for k, v in ref.items()
                if k.endswith(suffix) and v.dtype != object and not k.startswith("save_counter/")}
    assert "nested/inner" in expected and "with..dot" in expected
    assert dict(result.left_out) == {"_CHECKPOINTABLE_OBJECT_GRAPH": "bookkeeping", "save_counter": "bookkeeping",
                                     "strings": "string tensor"}
    assert_restores_to(out, expected, tmp_path)


def test_keras_model_side_names_and_optimizer(keras3_ckpt, tmp_path):
    ckpt = tf2flax.open_checkpoint(keras3_ckpt.prefix)
    graph = ckpt.object_graph.by_key()
    ref = tf_values(keras3_ckpt.prefix)
    result = quiet_convert(ckpt, tmp_path / "model")
    model = {graph[k].model_path: v for k, v in ref.items()
             if k in graph and not graph[k].is_optimizer and graph[k].model_path != "save_counter"}
    assert "model/_functional/_operations/1/_kernel" in model  # the model side, not optimizer/_trainable_variables
    assert set(result.plan.entries) == set(model)
    assert {why for _, why in result.left_out} == {"optimizer state", "bookkeeping"}

    everything = quiet_convert(ckpt, tmp_path / "all", include_optimizer=True)
    optimizer = {graph[k].model_path for k in graph if graph[k].is_optimizer}
    assert optimizer and optimizer | set(model) | {"save_counter"} == set(everything.plan.entries)
    assert everything.left_out == [("_CHECKPOINTABLE_OBJECT_GRAPH", "string tensor")]
    expected = {graph[k].model_path if k in graph else k.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE"): v
                for k, v in ref.items() if v.dtype != object}
    assert_restores_to(tmp_path / "all", expected, tmp_path)


def test_full_names_give_keras_layer_paths(keras3_ckpt, tmp_path):
    ckpt = tf2flax.open_checkpoint(keras3_ckpt.prefix)
    graph = ckpt.object_graph.by_key()
    ref = tf_values(keras3_ckpt.prefix)
    result = quiet_convert(ckpt, tmp_path / "full", names="full")
    expected = {graph[k].full_name: v for k, v in ref.items()
                if k in graph and not graph[k].is_optimizer and graph[k].model_path != "save_counter"}
    assert "sequential/d1/kernel" in expected  # the Keras layer path, not model/_functional/_operations/1/_kernel
    assert set(result.plan.entries) == set(expected)
    assert_restores_to(tmp_path / "full", expected, tmp_path)
    with pytest.raises(MappingError, match="unknown names 'layer'"):
        tf2flax.convert(ckpt, tmp_path / "never", names="layer")
    assert not (tmp_path / "never").exists()


def test_map_preset_transforms_and_dtype(keras3_ckpt, tmp_path):
    ref = tf2flax.open_checkpoint(keras3_ckpt.prefix)
    full = {v.full_name: v.key for v in ref.object_graph.variables}
    tf = {name: tf_writers.as_array(v) for name, v in tf_values(keras3_ckpt.prefix).items()}
    out = tmp_path / "flax"
    result = tf2flax.convert(keras3_ckpt.prefix, out, preset="keras", dtype="bfloat16",
                             mapping={"sequential/d1/": "params/Dense_0/", "sequential/bn/": "params/BatchNorm_0/"},
                             transforms={r"params/Dense_0/kernel": "transpose"})
    bf16 = lambda name: tf[full[name]].astype(ml_dtypes.bfloat16)  # noqa: E731
    expected = {
        "params/Dense_0/kernel": bf16("sequential/d1/kernel").T.copy(),
        "params/Dense_0/bias": bf16("sequential/d1/bias"),
        "params/BatchNorm_0/scale": bf16("sequential/bn/gamma"),
        "params/BatchNorm_0/bias": bf16("sequential/bn/beta"),
        "params/BatchNorm_0/mean": bf16("sequential/bn/moving_mean"),
        "params/BatchNorm_0/var": bf16("sequential/bn/moving_variance"),
    }
    assert set(result.plan.entries) == set(expected)
    assert sorted(result.report.unused) == ["sequential/d2/bias", "sequential/d2/kernel"]
    assert_restores_to(out, expected, tmp_path)


def test_a_map_entry_that_matches_nothing_is_an_error_naming_it(tmp_path):
    """As TensorFlow's init_from_checkpoint refuses a checkpoint name it cannot find: a scope entry with
    no tensor under it (a typo among correct entries) names the entry and the closest scopes, in the
    API, in --dry-run and in convert (exit 2, one line, nothing written). Before, its tensors were
    silently dropped with exit 0."""
    prefix = tf_writers.write_raw_bundle(tmp_path / "ckpt" / "model", {
        "bert/encoder/w": np.ones(2, np.float32), "bert/pooler/w": np.ones(2, np.float32),
        "cls/w": np.ones(2, np.float32), "bert/encoder/w/adam_m": np.ones(2, np.float32)})
    out = tmp_path / "out"
    with pytest.raises(MappingError, match=re.escape("map entry 'clss/': 'params/cls/': checkpoint ") + ".*"
                       + re.escape("has no tensor under scope 'clss/'. Close names: 'cls/'.")):
        quiet_convert(prefix, out, mapping={"bert/": "params/bert/", "clss/": "params/cls/"}, dry_run=True)
    with pytest.raises(MappingError, match=r"scope 'bert/encodr/'\. Close names: 'bert/encoder/'"):
        quiet_convert(prefix, out, mapping={"bert/encodr/": "params/enc/"})
    with pytest.raises(MappingError, match=r"scope 'bert/encoder/w/' \(the tensors there are optimizer state .* "
                                           r"--include-optimizer\)"):
        quiet_convert(prefix, out, mapping={"bert/encoder/w/": "opt/"})
    assert quiet_convert(prefix, out, mapping={"bert/encoder/w/": "opt/"}, include_optimizer=True,
                         dry_run=True).plan.entries.keys() == {"opt/adam_m"}
    map_file = tmp_path / "map.yaml"
    map_file.write_text("map:\n  bert/: params/bert/\n  clss/: params/cls/\n")
    for extra in (["--dry-run"], []):
        r = subprocess.run([sys.executable, "-m", "tf2flax", "convert", prefix, str(out), "--map", str(map_file),
                            *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"tf2flax: error: map entry 'clss/': 'params/cls/': checkpoint {prefix} has no tensor under scope "
            "'clss/'. Close names: 'cls/'."]
    assert not out.exists()


def test_map_file_matches_python_mapping(tmp_path):
    yaml_file = tmp_path / "map.yaml"
    yaml_file.write_text(textwrap.dedent("""
        preset: keras
        map:
          "sequential/": "params/"
        rules:
          - ["^x/", null]
        transforms:
          ".*/kernel": transpose
          "params/a": [[reshape, [4, -1]], [cast, bfloat16]]
          "params/b": [transpose, [1, 0]]
          "params/c": [cast, float16]
        part_axis: 0
    """))
    json_file = tmp_path / "map.json"
    json_file.write_text(json.dumps({"map": {"sequential/": "params/"}, "rules": {"^x/": None}, "preset": "keras",
                                     "transforms": {".*/kernel": "transpose"}}))
    assert convert_module.load_map_file(yaml_file) == {
        "preset": "keras", "mapping": {"sequential/": "params/"}, "rules": [["^x/", None]], "part_axis": 0,
        "transforms": {".*/kernel": "transpose", "params/a": [("reshape", [4, -1]), ("cast", "bfloat16")],
                       "params/b": ("transpose", [1, 0]), "params/c": ("cast", "float16")}}
    assert convert_module.load_map_file(json_file)["rules"] == {"^x/": None}
    anchored = tmp_path / "anchored.yaml"  # an anchor without aliases is plain YAML
    anchored.write_text("map: &m {sequential/: params/}\n")
    assert mapfile.load_map_file(anchored) == {"mapping": {"sequential/": "params/"}}


def alias_bomb() -> str:
    """354 bytes of YAML whose last map entry is 9**9 strings when walked (a 2 GB message, printed)."""
    lines = ["map:", "  z1: &1 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  z{n}: &{n} [" + ",".join([f"*{n - 1}"] * 9) + "]" for n in range(2, 10)]
    return "\n".join(lines + ["  a: *9"])


@pytest.mark.parametrize("name, text, message", [
    ("bad.yaml", "map: [1", "not valid YAML (line 1, column 8)"),
    ("bad.yaml", "maps: {}", "unknown key(s) ['maps']"),
    ("bad.yaml", "- a\n- b", "expected a mapping"),
    ("bad.yaml", "transforms: {k: [flip, 1]}", "is not a transform"),
    ("bad.yaml", "preset: [keras]", "preset must be a name"),
    ("bad.yaml", "rules: 5", "rules must be a list of [pattern, replacement] pairs, or a mapping, got 5"),
    ("bad.yaml", "map: 5", "map must be a mapping of checkpoint name to output path"),
    ("bad.yaml", 'part_axis: "x"', "part_axis must be an axis (an int) or a mapping of variable name to axis, got 'x'"),
    ("bad.yaml", "part_axis: {a: 1.5}", "part_axis must be an axis"),
    ("bad.yaml", "part_axis: true", "part_axis must be an axis"),
    ("bomb.yaml", alias_bomb(), "aliases (*1) are not allowed in map files"),
    ("deep.yaml", "map: " + "[" * 100000 + "]" * 100000, "nested more than 32 levels deep"),
    ("deep.yaml", "map:\n  " + "- " * 100000 + "x", "nested more than 32 levels deep"),
    ("deep.yaml", "map: " + "{a: " * 100000 + "1" + "}" * 100000, "nested more than 32 levels deep"),
    ("deep.json", '{"map": ' + "[" * 100000 + "]" * 100000 + "}", "nested more than 32 levels deep"),
    ("deep.json", '{"map": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32 levels deep"),
    ("big.yaml", "map: {}\n" + "#" * (1 << 20), "larger than 1 MB"),
    ("long.json", '{"rules": [["' + "x" * 5000 + '", "y"]]}', "(5000 characters) is longer than 4096 characters"),
    ("long.yaml", "map: {k: " + "v" * 5000 + "}", "(5000 characters) is longer than 4096 characters"),
    ("bad.yaml", "transforms: {k: " + "[flip, " * 25 + "1" + "]" * 25 + "}", "is not a transform"),
], ids=["yaml", "key", "list", "transform", "preset", "rules", "map", "part_axis_str", "part_axis_float",
        "part_axis_bool", "alias_bomb", "deep_yaml", "deep_block_yaml", "deep_mapping_yaml", "deep_json", "json_40_deep", "too_big", "long_rule",
        "long_value", "deep_transform"])
def test_bad_map_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MappingError, match=re.escape(message)) as caught:
        mapfile.load_map_file(path)
    assert str(path) in str(caught.value) and len(str(caught.value)) < 600


def test_bad_part_axis_and_rules_through_the_api(tf1_ckpt, tmp_path):
    for options in ({"part_axis": "x"}, {"part_axis": "x", "rules": []}, {"part_axis": {"part/rows": "0"}},
                    {"rules": 5}):
        with pytest.raises(MappingError, match="part_axis must be an axis|rules must be a list"):
            tf2flax.convert(tf1_ckpt.prefix, tmp_path / "out", dry_run=True, **options)
    params = {"dense": {"kernel": np.zeros((4, 6), np.float32)}}
    with pytest.raises(MappingError, match="part_axis must be an axis"):
        tf2flax.init_params(tf1_ckpt.prefix, None, params, part_axis="x")
    assert os.listdir(tmp_path) == []


def test_optimizer_slots_and_name_conflicts(tmp_path):
    values = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3), "w/Adam": np.ones((2, 3), np.float32),
        "w/Adam_1": np.full((2, 3), 2, np.float32), "beta1_power": np.array(0.9, np.float32),
        "global_step": np.array(7, np.int64), "empty": np.zeros((0, 4), np.float32),
    }
    prefix = tf_writers.write_raw_bundle(tmp_path / "tf1" / "model", values)
    with pytest.warns(convert_module.ConvertWarning, match="zero-size tensor.*empty"):
        default = tf2flax.convert(prefix, tmp_path / "default", dry_run=True)
    assert list(default.plan.entries) == ["w"]
    assert dict(default.left_out) == {"beta1_power": "optimizer state", "global_step": "bookkeeping",
                                      "w/Adam": "optimizer state", "w/Adam_1": "optimizer state",
                                      "empty": "zero-size tensor"}
    result = quiet_convert(prefix, tmp_path / "all", include_optimizer=True)
    expected = {k: v for k, v in values.items() if v.size}
    expected["w/__value__"] = expected.pop("w")  # 'w' is also the scope of its slots
    assert_restores_to(tmp_path / "all", expected, tmp_path)
    assert result.tensors == 5

    clash = tf_writers.write_raw_bundle(tmp_path / "clash" / "model", {"a.b": np.ones(2), "a/b": np.zeros(2)})
    with pytest.raises(MappingError, match="would both be stored by Orbax as 'a.b'"):
        tf2flax.convert(clash, tmp_path / "clash-out")
    with pytest.raises(MappingError, match="is also the scope of"):
        tf2flax.convert(prefix, tmp_path / "scope-out", mapping={"w": "x", "w/Adam": "x/m"}, include_optimizer=True)


def test_colliding_output_paths_are_refused_naming_both_sources(tmp_path):
    tf1 = tf_writers.write_raw_bundle(tmp_path / "tf1" / "model", {
        "w": np.ones(2, np.float32), "w/__value__": np.zeros(3, np.float32), "a/k": np.ones(1, np.float32),
        "b/k": np.zeros(1, np.float32)})
    for options in ({}, {"include_optimizer": True}, {"rules": []}):  # 'w' settles at 'w/__value__'
        with pytest.raises(MappingError, match=r"model: checkpoint tensors 'w' and 'w/__value__' would both be "
                                               r"written to 'w/__value__'"):
            quiet_convert(tf1, tmp_path / "out", dry_run=True, **options)
    with pytest.raises(MappingError, match="checkpoint tensors 'a/k' and 'b/k' would both be written to 'x/k'"):
        quiet_convert(tf1, tmp_path / "out", mapping={"a/": "x/", "b/": "x/"}, dry_run=True)
    with pytest.raises(MappingError, match="checkpoint tensors 'a/k' and 'b/k' would both be written to 'k'"):
        quiet_convert(tf1, tmp_path / "out", rules=[["^[ab]/", ""], ["^w", "v"]], dry_run=True)
    same = quiet_convert(tf1, tmp_path / "out", mapping={"a/": "x/", "a/k": "x/k"}, dry_run=True)
    assert dict(same.report.matched) == {"x/k": "a/k"}  # one tensor named twice is no collision

    T = tf_writers.tf()
    model = T.Module()
    model.x = T.Variable(np.zeros(1, np.float32), name="same")  # shared full_name: both keep object paths
    model.y = T.Variable(np.ones(2, np.float32), name="same")
    model.z = T.Variable(np.full(3, 2, np.float32), name="model/y")  # a unique full_name: model y's path
    tf2 = T.train.Checkpoint(model=model).save(str(tmp_path / "tf2" / "ckpt"))
    assert sorted(quiet_convert(tf2, tmp_path / "out", dry_run=True).plan.entries) == ["model/x", "model/y",
                                                                                       "model/z"]
    with pytest.raises(MappingError, match=r"ckpt-1: checkpoint tensors 'model/y/.ATTRIBUTES/VARIABLE_VALUE' and "
                                           r"'model/z/.ATTRIBUTES/VARIABLE_VALUE' would both be written to 'model/y'"):
        quiet_convert(tf2, tmp_path / "out", names="full", dry_run=True)
    assert sorted(os.listdir(tmp_path)) == ["tf1", "tf2"]


def test_deep_long_names_cost_little_and_are_refused(tmp_path):
    import tracemalloc

    long_name = "a/" * 19999 + "a"  # 40 KB; settling all its scopes used to cost 400 MB (200 KB: 9.7 GB)
    prefix = tf_writers.write_raw_bundle(tmp_path / "long" / "model", {long_name: np.ones(2, np.float32),
                                                                         "ok": np.ones(1, np.float32)})
    ckpt = tf2flax.open_checkpoint(prefix)
    for options in ({}, {"rules": [["^ok$", "fine"]]}):
        tracemalloc.start()
        try:
            with pytest.raises(MappingError, match=r"long/model: tensor 'a/a/a.*\.\.\. \(39999 characters\)"
                                                   r".*: a path 20000 levels deep and 39999 characters long") as caught:
                tf2flax.convert(ckpt, tmp_path / "out", dry_run=True, **options)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 << 20 and len(str(caught.value)) < 600
    settled = convert_module.settle_paths([f"s{i}/" * 50 + "v" for i in range(2000)] + ["s1", "s1/a" * 2])
    assert settled["s1"] == "s1/__value__" and settled["s1/a" * 2] == "s1/a" * 2


def test_dry_run_existing_output_and_force(tf1_ckpt, tmp_path):
    out = tmp_path / "out"
    dry = quiet_convert(tf1_ckpt.prefix, out, dry_run=True)
    assert not out.exists() and dry.out is None and "dense/kernel" in dry.plan.entries
    assert "part/rows <- part/rows  [10, 3] float32" in dry.describe()
    assert dry.summary().startswith("dry run: 12 tensors")

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        tf2flax.convert(tf1_ckpt.prefix, out)
    assert quiet_convert(tf1_ckpt.prefix, out, dry_run=True).out is None  # a dry run writes nothing: no refusal
    with pytest.raises(OutputExistsError, match="has no readable _CHECKPOINT_METADATA"):
        quiet_convert(tf1_ckpt.prefix, out, force=True)  # --force replaces only what tf2flax wrote
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    (out / "keep.txt").unlink()

    def boom(x):
        raise RuntimeError("transform failed")

    quiet_convert(tf1_ckpt.prefix, out, force=True)  # an empty directory may be replaced
    with pytest.raises(RuntimeError, match="transform failed"):  # a failed forced run keeps the old output
        quiet_convert(tf1_ckpt.prefix, out, force=True, transforms={"dense/bias": boom})
    before = sorted(os.listdir(out))
    assert "_CHECKPOINT_METADATA" in before and sorted(os.listdir(tmp_path)) == ["out"]
    quiet_convert(tf1_ckpt.prefix, out, force=True, include_optimizer=True)  # our own output may be replaced
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == ["out"]
    meta = json.loads((out / "_CHECKPOINT_METADATA").read_text())["custom_metadata"]["tf2flax"]
    assert meta["include_optimizer"] is True


def test_force_never_deletes_the_input_or_unrelated_files(tmp_path, monkeypatch):
    run = tmp_path / "run"
    prefix = tf_writers.write_raw_bundle(run / "model.ckpt-1", {"w": np.ones((2, 3), np.float32)})
    (run / "train.py").write_text("print('training')")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(run)
    refused = {run: "holds the checkpoint being converted", tmp_path: "holds the checkpoint being converted",
               Path("."): "holds the checkpoint being converted"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    snapshot[other / "notes.txt"] = b"keep"
    refused[other] = "has no readable _CHECKPOINT_METADATA"
    work = tmp_path / "work"
    work.mkdir()
    refused[tmp_path / "work"] = "holds the current directory"
    import orbax.checkpoint as ocp

    ocp.v1.save(tmp_path / "foreign", {"x": np.ones(2, np.float32)})  # someone else's Orbax checkpoint
    refused[tmp_path / "foreign"] = "an Orbax checkpoint that tf2flax did not write"
    for out, message in refused.items():
        if out == tmp_path / "work":
            monkeypatch.chdir(work)
        with pytest.raises(OutputExistsError, match=message):
            quiet_convert(prefix, out, force=True)
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "other", "run", "work"]
    monkeypatch.chdir(run)
    quiet_convert(prefix, run / "orbax")  # an OUT inside the checkpoint's directory is fine
    assert (run / "orbax" / "_CHECKPOINT_METADATA").is_file()


def test_force_refuses_an_output_holding_a_file_a_conversion_does_not_write(tf1_ckpt, tmp_path):
    """Files added anywhere inside an earlier output (its item directory, a new subfolder, a symbolic
    link) make --force refuse, naming the first one; nothing is deleted. Without them it replaces."""
    out = tmp_path / "out"
    quiet_convert(tf1_ckpt.prefix, out)
    quiet_convert(tf1_ckpt.prefix, out, force=True)  # our own output, as written: replaced
    assert sorted(os.listdir(tmp_path)) == ["out"]
    ours = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "state/_METADATA" in ours and any(p.startswith("state/d/") for p in ours)
    for added, named in [("state/notes.txt", "holds 'state/notes.txt', a file a conversion does not write"),
                         ("state/d/mine/keep.bin", "holds 'state/d/mine/keep.bin'"),
                         ("extra/_METADATA", "holds 'extra/_METADATA'")]:
        (out / added).parent.mkdir(parents=True, exist_ok=True)
        (out / added).write_bytes(b"the user's")
        with pytest.raises(OutputExistsError, match=re.escape(named)):
            quiet_convert(tf1_ckpt.prefix, out, force=True)
        assert (out / added).read_bytes() == b"the user's" and sorted(os.listdir(tmp_path)) == ["out"]
        (out / added).unlink()
    (out / "state" / "link").symlink_to(tmp_path)
    with pytest.raises(OutputExistsError, match="holds a symbolic link 'state/link'"):
        quiet_convert(tf1_ckpt.prefix, out, force=True)
    (out / "state" / "link").unlink()
    r = subprocess.run([sys.executable, "-m", "tf2flax", "convert", tf1_ckpt.prefix, str(out), "--force", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "extra").exists()  # (the empty folder left from above went with the old output)
    assert (out / "state" / "_METADATA").is_file() and (out / "commit_success.txt").is_file()


def test_dangling_symlink_out_is_refused_up_front(tf1_ckpt, tmp_path):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    read = []

    def spy(x):
        read.append(x)
        return x

    for force in (False, True):
        with pytest.raises(OutputExistsError, match="symbolic link to .*nowhere.*does not exist"):
            quiet_convert(tf1_ckpt.prefix, out, force=force, transforms={".*": spy})
    assert not [x for x in read if isinstance(x, np.ndarray)]  # refused before reading any tensor
    assert sorted(os.listdir(tmp_path)) == ["out"] and out.is_symlink()


def test_interrupt_leaves_nothing(tf1_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(orbax_writer, "GROUP_MIN_BYTES", 1)  # one tensor per partial save
    monkeypatch.setattr(orbax_writer, "GROUP_MAX_BYTES", 1)
    seen = []

    def interrupt(x):
        if not isinstance(x, np.ndarray):  # the plan traces it once with jax.eval_shape
            return x
        seen.append(x)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        quiet_convert(tf1_ckpt.prefix, tmp_path / "out", transforms={".*": interrupt})
    assert len(seen) == 3 and os.listdir(tmp_path) == []


def test_temporaries_of_a_killed_conversion_are_named_and_kept(tf1_ckpt, tmp_path):
    """A killed conversion leaves OUT.tmp-<hex> (and Orbax's .partial_save of it): the next one names
    them in a warning and leaves them alone (one may belong to a conversion running now)."""
    out = tmp_path / "out"
    left = [tmp_path / "out.tmp-0badc0de.partial_save", tmp_path / "out.tmp-deadbeef"]
    for d in [*left, tmp_path / "out.tmp-notours", tmp_path / "other.tmp-deadbeef"]:
        d.mkdir()
    with pytest.warns(convert_module.ConvertWarning, match=r"^2 temporary directories beside the output, from an interrupted "
                                            r"\(or a running\) conversion: .*out\.tmp-0badc0de\.partial_save, "
                                            r".*out\.tmp-deadbeef; remove them if no conversion is running$"):
        tf2flax.convert(tf1_ckpt.prefix, out)
    assert all(d.is_dir() for d in left) and (out / "_CHECKPOINT_METADATA").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error", convert_module.ConvertWarning)
        tf2flax.convert(tf1_ckpt.prefix, tmp_path / "elsewhere", mapping={"dense/": "dense/"})


def test_dtype_casts_floating_tensors_only(tf1_ckpt, tmp_path):
    plan = quiet_convert(tf1_ckpt.prefix, tmp_path / "o", dtype="bfloat16", dry_run=True).plan
    dtypes = {k: np.dtype(e.dtype).name for k, e in plan.entries.items()}
    assert dtypes["dense/kernel"] == dtypes["cpu1/half"] == dtypes["part/cols"] == "bfloat16"
    assert (dtypes["part/vec"], dtypes["cpu1/flags"], dtypes["cpu1/counter"]) == ("int64", "bool", "int64")
    with pytest.raises(MappingError, match="not a floating dtype"):
        tf2flax.convert(tf1_ckpt.prefix, tmp_path / "o", dtype="int32")
    with pytest.raises(MappingError, match="unknown dtype"):
        tf2flax.convert(tf1_ckpt.prefix, tmp_path / "o", dtype="float77")
    assert os.listdir(tmp_path) == []

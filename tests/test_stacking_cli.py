"""``{i}`` and presets from the command line and in conversions: map files, rules, ``presets``,
``ls --preset``; converted stacks equal TensorFlow's per-layer values stacked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tf2flax
from tf_writers import tf_read_all

ROOT = Path(__file__).resolve().parent.parent
BERT = ROOT / "examples" / "bert_tiny"
GARDEN = ROOT / "examples" / "bert_tiny_garden" / "bert_model.ckpt"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def restored(out: Path) -> dict[str, np.ndarray]:
    tree = ocp.v1.load(out)
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def stacked(values: dict, name: str, axis: int = 0) -> np.ndarray:
    return np.stack([values[name.replace("{i}", str(i))] for i in range(2)], axis=axis)


def test_presets_lists_each_preset_on_one_line():
    done = cli("presets")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["bert", "keras", "t5x"]
    assert "FlaxBertModel" in lines[0] and "checkpoint_importer" in lines[2]


def test_ls_preset_shows_what_each_tensor_becomes():
    done = cli("ls", GARDEN, "--preset", "bert", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["key"]: r for r in json.loads(done.stdout)["tensors"]}
    row = rows["encoder/layer_with_weights-5/_attention_layer/_query_dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert (row["becomes"], row["layer"], row["scanned"], row["left_out"]) == (
        "encoder/layer/1/attention/self/query/kernel", None, "encoder/layer/attention/self/query/kernel[1]", None)
    table = cli("ls", BERT, "--preset", "bert").stdout.splitlines()
    assert next(t for t in table if t.startswith("name ")).split()[-1] == "becomes"
    line = next(t for t in table if t.startswith("bert/pooler/dense/kernel/adam_m "))
    assert line.endswith("pooler/dense/kernel/adam_m (optimizer state)")
    assert next(t for t in table if t.startswith("bert/embeddings/LayerNorm/gamma ")).endswith(
        "embeddings/LayerNorm/scale")


def test_unknown_preset_is_one_line_and_exit_2():
    done = cli("ls", BERT, "--preset", "nope")
    assert done.returncode == 2
    assert done.stderr == "tf2flax: error: unknown preset 'nope'; known presets: ['bert', 'keras', 't5x']\n"


@pytest.mark.parametrize("text,axis", [
    ("map:\n  'bert/encoder/layer_{i}/': 'encoder/layers/'\n", 0),
    ("map:\n  'bert/encoder/layer_{i}/': 'encoder/layers/'\nstack_axis: 1\n", 1),
    ("rules:\n  - ['^bert/encoder/layer_{i}/', 'encoder/layers/']\n  - ['^(bert|cls)/', null]\n", 0),
])
def test_map_file_stacks_convert_to_tensorflows_values(tmp_path, text, axis):
    (tmp_path / "map.yaml").write_text(text)
    out = tmp_path / "out"
    done = cli("convert", BERT, out, "--map", tmp_path / "map.yaml", "--quiet")
    assert done.returncode == 0, done.stderr
    got = restored(out)
    values = tf_read_all(str(BERT / "model.ckpt-3"))
    layer = [n[len("bert/encoder/layer_0/"):] for n in values
             if n.startswith("bert/encoder/layer_0/") and "adam" not in n]
    assert sorted(got) == sorted(f"encoder/layers/{n}" for n in layer)
    for n in layer:
        np.testing.assert_array_equal(got[f"encoder/layers/{n}"], stacked(values, f"bert/encoder/layer_{{i}}/{n}", axis))


def test_map_file_per_layer_rename_and_bad_stack_axis(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"map": {"bert/encoder/layer_{i}/output/": "block_{i}/out/"}}))
    result = tf2flax.convert(BERT, tmp_path / "o", dry_run=True, **tf2flax.conversion.load_map_file(tmp_path / "map.json"))
    assert sorted(result.plan.entries) == sorted(f"block_{i}/out/{n}" for i in range(2) for n in (
        "LayerNorm/beta", "LayerNorm/gamma", "dense/bias", "dense/kernel"))
    (tmp_path / "bad.yaml").write_text("map:\n  'bert/encoder/layer_{i}/': 'layers/'\nstack_axis: x\n")
    done = cli("convert", BERT, tmp_path / "o2", "--map", tmp_path / "bad.yaml")
    assert done.returncode == 2
    assert done.stderr == "tf2flax: error: stack_axis must be an int or a {target regex: int} dict, got 'x'\n"


def test_convert_with_bert_preset_and_a_stacking_rule_keeps_checkpoint_shapes(tmp_path):
    """Without a model there is no target shape to fit: Model Garden's 3-D kernels stay 3-D, stacked."""
    result = tf2flax.convert(GARDEN, tmp_path / "o", preset="bert",
                             rules=[("^encoder/layer/{i}/", "encoder/layers/")])
    got = restored(tmp_path / "o")
    tf1 = tf_read_all(str(BERT / "model.ckpt-3"))
    np.testing.assert_array_equal(got["encoder/layers/attention/self/query/kernel"],
                                  stacked(tf1, "bert/encoder/layer_{i}/attention/self/query/kernel").reshape(2, 32, 2, 16))
    np.testing.assert_array_equal(got["encoder/layers/attention/output/dense/kernel"],
                                  stacked(tf1, "bert/encoder/layer_{i}/attention/output/dense/kernel").reshape(2, 2, 16, 32))
    assert result.tensors == len(got) == 7 + 16

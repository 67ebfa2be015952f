"""``preset="bert"``: google-research/bert TF1 and Model Garden TF2 checkpoints -> FlaxBertModel's tree.

Both shipped example checkpoints are written by TensorFlow (``examples/make_bert_checkpoint.py``,
``examples/make_bert_garden_checkpoint.py``), with those layouts' exact names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
from mapping_fakes import FakeCheckpoint
from tf2flax.mapping import build_plan
from tf2flax.targets import flatten_targets

ROOT = Path(__file__).resolve().parent.parent
TF1 = ROOT / "examples" / "bert_tiny"
GARDEN = ROOT / "examples" / "bert_tiny_garden"
H, I, L, V, POS = 32, 64, 2, 128, 64


def flax_bert_params(scanned: bool = False) -> dict[str, tuple[int, ...]]:
    """transformers' FlaxBertModel parameter names and shapes for the tiny config (written out)."""
    out = {"embeddings/word_embeddings/embedding": (V, H), "embeddings/position_embeddings/embedding": (POS, H),
           "embeddings/token_type_embeddings/embedding": (2, H), "embeddings/LayerNorm/scale": (H,),
           "embeddings/LayerNorm/bias": (H,), "pooler/dense/kernel": (H, H), "pooler/dense/bias": (H,)}
    layer = {"attention/self/query/kernel": (H, H), "attention/self/query/bias": (H,),
             "attention/self/key/kernel": (H, H), "attention/self/key/bias": (H,),
             "attention/self/value/kernel": (H, H), "attention/self/value/bias": (H,),
             "attention/output/dense/kernel": (H, H), "attention/output/dense/bias": (H,),
             "attention/output/LayerNorm/scale": (H,), "attention/output/LayerNorm/bias": (H,),
             "intermediate/dense/kernel": (H, I), "intermediate/dense/bias": (I,),
             "output/dense/kernel": (I, H), "output/dense/bias": (H,),
             "output/LayerNorm/scale": (H,), "output/LayerNorm/bias": (H,)}
    for name, shape in layer.items():
        if scanned:
            out[f"encoder/layer/{name}"] = (L, *shape)
        else:
            out.update({f"encoder/layer/{i}/{name}": shape for i in range(L)})
    return out


def tree(leaves: dict[str, tuple[int, ...]], prefix: str = "", sharding=None) -> dict:
    out: dict = {}
    for path, shape in leaves.items():
        *scopes, leaf = (prefix + path).split("/")
        node = out
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding(path, shape) if sharding else None)
    return out


def tf1_weights() -> dict[str, np.ndarray]:
    ckpt = tf2flax.open_checkpoint(TF1)
    return {name: ckpt.read(name) for name, _ in ckpt.list_variables()}


def expected_values(scanned: bool) -> dict[str, np.ndarray]:
    """Each Flax leaf's value, from the TF1 checkpoint's arrays by BERT's own names."""
    w = tf1_weights()
    out = {}
    for path in flax_bert_params(scanned):
        name = "bert/" + re.sub(r"/scale$", "/gamma", re.sub(r"LayerNorm/bias$", "LayerNorm/beta", path))
        name = re.sub(r"_embeddings/embedding$", "_embeddings", name)
        if scanned and path.startswith("encoder/layer/"):
            out[path] = np.stack([w[name.replace("encoder/layer/", f"encoder/layer_{i}/")] for i in range(L)])
        else:
            out[path] = w[re.sub(r"encoder/layer/(\d+)/", r"encoder/layer_\1/", name)]
    return out


@pytest.mark.parametrize("checkpoint", [TF1, GARDEN / "bert_model.ckpt"], ids=["tf1", "garden"])
@pytest.mark.parametrize("scanned", [False, True], ids=["plain", "scanned"])
@pytest.mark.parametrize("prefix", ["", "params/"], ids=["params", "variables"])
def test_both_layouts_fill_the_flax_bert_tree(checkpoint, scanned, prefix):
    params, result = tf2flax.init_params(checkpoint, None, tree(flax_bert_params(scanned), prefix), preset="bert",
                                         return_report=True)
    assert not result.report.unset
    assert result.report.unused == ([] if "garden" in str(checkpoint) else sorted(
        n for n, _ in tf2flax.open_checkpoint(TF1).list_variables() if n.startswith("cls/") and "adam" not in n))
    flat = {t[len(prefix):]: leaf.value for t, leaf in flatten_targets(params).items()}
    for path, want in expected_values(scanned).items():
        np.testing.assert_allclose(np.asarray(flat[path]), want, rtol=0, atol=0, err_msg=path)


def test_model_garden_kernels_are_reshaped_and_named_from_object_paths():
    plan = build_plan(tf2flax.open_checkpoint(GARDEN / "bert_model.ckpt"), None,
                      flatten_targets(tree(flax_bert_params())), preset="bert")
    matched = plan.report.matched  # sources are labelled by their Model Garden variable names
    assert matched["encoder/layer/1/attention/self/query/kernel"] == \
        "(transformer/layer_1/self_attention/query/kernel -> reshape[32, 32])"
    assert matched["encoder/layer/0/attention/output/dense/kernel"] == \
        "(transformer/layer_0/self_attention/attention_output/kernel -> reshape[32, 32])"
    assert matched["encoder/layer/0/attention/self/value/bias"] == \
        "(transformer/layer_0/self_attention/value/bias -> reshape[32])"
    assert matched["pooler/dense/kernel"] == "pooler_transform/kernel"
    assert matched["embeddings/LayerNorm/scale"] == "embeddings/layer_norm/gamma"
    assert matched["embeddings/word_embeddings/embedding"] == "word_embeddings/embeddings"


@pytest.mark.parametrize("spec", [P("x"), P(None, None, "x"), P(None, "x")], ids=["layers", "hidden", "rows"])
def test_scanned_model_garden_reads_each_device_region_without_whole_reads(spec):
    mesh = jax.make_mesh((2,), ("x",))

    def sharding(path, shape):
        return NamedSharding(mesh, spec if len(shape) == 3 else P())

    ckpt = tf2flax.open_checkpoint(GARDEN / "bert_model.ckpt")
    params, result = tf2flax.init_params(ckpt, None, tree(flax_bert_params(True), sharding=sharding), preset="bert",
                                         return_report=True)
    assert result.stats.full_reads == 0
    total = sum(np.prod(s) * 4 for s in flax_bert_params(True).values())
    assert result.stats.bytes_read == total
    flat = {t: leaf.value for t, leaf in flatten_targets(params).items()}
    for path, want in expected_values(True).items():
        for shard in flat[path].addressable_shards:
            np.testing.assert_allclose(np.asarray(shard.data), want[shard.index], rtol=0, atol=0)


def run(script: str, *args: str, devices: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_example_matches_tensorflow_plain_and_scanned_on_8_devices():
    out = run("bert_preset_to_flax.py", devices=8).stdout
    diffs = [float(d) for d in re.findall(r"max \|flax - tensorflow\| = (\S+)", out)]
    assert len(diffs) == 6 and max(diffs) <= 1e-5
    assert re.findall(r"\[(\w+), ([^\]]+)\] matched (\d+) target\(s\), (\d+) checkpoint tensor\(s\) unused, "
                      r"0 target\(s\) unset; .*; 0 read whole", out) == [
        ("tf1", "plain", "39", "7"), ("tf1", "scanned, layer axis sharded", "23", "7"),
        ("tf1", "scanned, hidden axis sharded", "23", "7"), ("garden", "plain", "39", "0"),
        ("garden", "scanned, layer axis sharded", "23", "0"), ("garden", "scanned, hidden axis sharded", "23", "0")]
    assert "scanned query kernel (2, 32, 32), P(None, None, ('layers', 'model')) over 8 devices" in out


def test_garden_generator_reproduces_the_shipped_checkpoint(tmp_path):
    run("make_bert_garden_checkpoint.py", "--out", str(tmp_path / "garden"))
    new = tf2flax.open_checkpoint(tmp_path / "garden" / "bert_model.ckpt")
    shipped = tf2flax.open_checkpoint(GARDEN / "bert_model.ckpt")
    assert new.list_variables() == shipped.list_variables()
    for name, _ in shipped.list_variables():
        if not name.startswith("_CHECKPOINTABLE"):
            np.testing.assert_array_equal(new.read(name), shipped.read(name), err_msg=name)
    recorded = np.load(tmp_path / "garden" / "reference_outputs.npz")
    np.testing.assert_allclose(recorded["sequence_output"], np.load(GARDEN / "reference_outputs.npz")["sequence_output"],
                               rtol=1e-5, atol=1e-6)


def test_model_garden_attribute_paths_map_like_layer_with_weights():
    """BertEncoderV2 also tracks its layers as attributes; a checkpoint may name variables that way."""
    garden = tf2flax.open_checkpoint(GARDEN / "bert_model.ckpt")
    attributes = {0: "_embedding_layer", 1: "_position_embedding_layer", 2: "_type_embedding_layer",
                  3: "_embedding_norm_layer", 4: "_transformer_layers/0", 5: "_transformer_layers/1", 6: "_pooler_layer"}
    tensors = {}
    for key in garden.names:
        m = re.match(r"^encoder/layer_with_weights-(\d+)/(.+)/\.ATTRIBUTES/VARIABLE_VALUE$", key)
        if m:
            tensors[f"model/encoder/{attributes[int(m.group(1))]}/{m.group(2)}"] = garden.read(key)
    assert len(tensors) == 39
    plan = build_plan(FakeCheckpoint(tensors), None, flatten_targets(tree(flax_bert_params(True))), preset="bert")
    assert not plan.report.unused and not plan.report.unset
    for path, want in expected_values(True).items():
        np.testing.assert_array_equal(plan.entries[path].read(), want, err_msg=path)

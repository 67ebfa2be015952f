"""The examples, run as users run them (subprocesses), plus the partitioned-embedding load they rely on.

- ``keras_cnn_to_flax.py`` / ``keras_transformer_to_flax.py``: Keras writes and trains; Flax must match
  Keras's outputs within 1e-4 with nothing left over on either side.
- ``bert_tf1_to_flax.py``: the shipped TF1 checkpoint, on 8 CPU devices (the word embedding table sharded
  by rows); outputs match BERT computed from the checkpoint's arrays, and TensorFlow's recorded outputs.
- ``make_bert_checkpoint.py`` regenerates the shipped checkpoint (same names and shapes, values within
  float32 rounding), the same bytes twice on one machine, and only where it is told to write.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
import tf_writers

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BERT_TINY = EXAMPLES / "bert_tiny"
TOL = 1e-4

needs_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None,
    reason="the Keras examples and the checkpoint generator need TensorFlow and Keras")


def run_example(script: str, *args: str, devices: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def max_diffs(stdout: str) -> dict[str, list[float]]:
    """``{'keras': [..], 'reference': [..], ...}`` from the ``max |flax - X| = D`` lines."""
    found: dict[str, list[float]] = {}
    for what, value in re.findall(r"max \|flax - (\w+)\| = (\S+)", stdout):
        found.setdefault(what, []).append(float(value))
    return found


def summaries(stdout: str) -> list[tuple[int, int, int]]:
    """(matched, unused, unset) of each report summary printed."""
    return [tuple(map(int, m)) for m in re.findall(
        r"matched (\d+) target\(s\), (\d+) checkpoint tensor\(s\) unused, (\d+) target\(s\) unset", stdout)]


@needs_tf
def test_keras_cnn_example():
    out = run_example("keras_cnn_to_flax.py").stdout
    diffs = max_diffs(out)["keras"]
    assert len(diffs) == 2 and max(diffs) < TOL, out  # linen and NNX
    # 4 layers with kernel+bias, 3 batch norms with scale/bias/mean/var: all loaded, nothing left over.
    assert summaries(out) == [(20, 0, 0), (20, 0, 0)], out
    assert "batch_stats/dw_bn/var <- dw_bn/moving_variance" in out
    assert "params/dw/kernel <- dw/kernel -> fn(depthwise_kernel)" in out
    assert "optimizer/bookkeeping tensor(s) skipped" in out
    stats = re.search(r"moving_variance in \[(\S+), (\S+)\]", out)
    assert stats and float(stats.group(1)) < 0.95, "batch-norm statistics should have moved off their init"


@needs_tf
def test_keras_transformer_example():
    out = run_example("keras_transformer_to_flax.py").stdout
    diffs = max_diffs(out)["keras"]
    assert len(diffs) == 1 and diffs[0] < TOL, out
    assert summaries(out) == [(36, 0, 0)], out
    assert "params/blocks_1/mha/out/kernel <- block1_mha/attention_output/kernel" in out
    assert "params/pos/embedding <- pos/embeddings" in out


def test_bert_example_sharded_on_8_devices():
    out = run_example("bert_tf1_to_flax.py", devices=8).stdout
    diffs = max_diffs(out)
    assert diffs["reference"][0] < TOL and diffs["tensorflow"][0] < TOL, out
    # 5 embedding + 2 x 16 encoder + 2 pooler leaves; the pre-training heads are unused;
    # Adam slots and global_step are dropped by rules (skipped, not unused).
    assert summaries(out) == [(39, 7, 0)], out
    unused = re.findall(r"^  unused: (\S+)$", out, re.M)
    assert len(unused) == 7 and all(u.startswith("cls/") for u in unused), out
    assert "(95 optimizer/bookkeeping tensor(s) skipped)" in out
    assert "sharded over 8 device(s), 16 rows each" in out, out
    assert ("encoder/layers/1/attention/query/kernel <- bert/encoder/layer_1/attention/self/query/kernel"
            " -> reshape[32, 2, 16]") in out


def test_bert_example_fails_above_tolerance():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "bert_tf1_to_flax.py"), "--tol", "0"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "FAILED" in proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# The shipped checkpoint's partitioned word embedding table, into sharded Flax embeddings
# ------------------------------------------------------------------------------------------------
WORD = "bert/embeddings/word_embeddings"


def test_shipped_word_embeddings_are_partitioned():
    ckpt = tf2flax.open_checkpoint(BERT_TINY)
    info = ckpt.info(WORD)
    assert info.shape == (128, 32)
    # fixed_size_partitioner(2): one full-shape key made of two row slices.
    assert [tuple((s.start, s.stop) for s in region) for region, _ in info.slices] == [
        ((0, 64), (0, 32)), ((64, 128), (0, 32))]


@pytest.mark.parametrize("spec", [P("model", None), P(None, "model")], ids=["rows", "columns"])
def test_partitioned_embedding_into_sharded_embed(spec):
    """Each device's block is read from the slices that hold it; the value equals the whole table."""
    n = jax.device_count()
    if n < 2:
        pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = jax.make_mesh((n,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    ckpt = tf2flax.open_checkpoint(BERT_TINY)
    full = ckpt.read(WORD)
    target = {"embed": {"embedding": jax.ShapeDtypeStruct((128, 32), np.float32,
                                                          sharding=NamedSharding(mesh, spec))}}
    loaded, result = tf2flax.init_params(ckpt, {WORD: "embed/embedding"}, target, return_report=True)
    table = loaded["embed"]["embedding"]
    assert table.sharding == NamedSharding(mesh, spec)
    np.testing.assert_array_equal(np.asarray(table), full)
    for shard in table.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
    assert result.stats.bytes_read == full.nbytes  # every byte read once, none twice
    assert result.stats.regions == n


def test_partitioned_embedding_into_flax_parts():
    """TensorFlow's rule 9: a saved table can be loaded into a different number of target parts."""
    ckpt = tf2flax.open_checkpoint(BERT_TINY)
    full = ckpt.read(WORD)
    target = {"word": {f"part_{i}": np.zeros((32, 32), np.float32) for i in range(4)}}  # word/part_0..3
    loaded = tf2flax.init_params(ckpt, {WORD: "word"}, target)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(loaded["word"][f"part_{i}"]), full[32 * i:32 * (i + 1)])


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------
@needs_tf
def test_make_bert_checkpoint_reproduces_the_shipped_one(tmp_path):
    shipped_bytes = {p.name: p.read_bytes() for p in BERT_TINY.iterdir()}
    out, again = tmp_path / "bert_tiny", tmp_path / "again"
    run_example("make_bert_checkpoint.py", "--out", str(out))
    run_example("make_bert_checkpoint.py", "--out", str(again))
    assert {p.name: p.read_bytes() for p in BERT_TINY.iterdir()} == shipped_bytes  # examples/ untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in again.iterdir()}
    assert (out / "checkpoint").read_text() == (BERT_TINY / "checkpoint").read_text()
    assert (out / "bert_config.json").read_text() == (BERT_TINY / "bert_config.json").read_text()
    new, shipped = tf2flax.open_checkpoint(out), tf2flax.open_checkpoint(BERT_TINY)
    assert new.list_variables() == shipped.list_variables()
    for name, _ in shipped.list_variables():
        # Bitwise on one machine (above); other CPUs and TensorFlow builds round differently.
        np.testing.assert_allclose(new.read(name), shipped.read(name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert sum(p.stat().st_size for p in out.iterdir()) < 1 << 20
    refused = subprocess.run([sys.executable, str(EXAMPLES / "make_bert_checkpoint.py")], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "--out" in refused.stderr  # no default that overwrites examples/


# ------------------------------------------------------------------------------------------------
# The README's main command
# ------------------------------------------------------------------------------------------------
def test_readme_main_command_converts_the_shipped_checkpoint(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"<!-- main-command -->\n```bash\n(.+)\n```", readme).group(1)
    install, run = command.split(" && ")
    assert install == "pip install -e ."
    argv = shlex.split(run)
    assert argv[:5] == ["python", "-m", "tf2flax", "convert", "examples/bert_tiny"]
    out = tmp_path / "bert_tiny_orbax"
    argv = [sys.executable, *argv[1:5], str(out), *argv[6:]]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"converted \d+ tensors, .* -> " + re.escape(str(out)), done.stdout.strip())

    expected = {name: value for name, value in tf_writers.tf_read_all(str(BERT_TINY / "model.ckpt-3")).items()
                if not re.search(r"adam_[mv]$|global_step$", name)}
    restored = ocp.v1.load(out)
    got = {"/".join(str(k.key) for k in path): np.asarray(v)
           for path, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
    assert sorted(got) == sorted(expected) and len(got) > 40
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)

"""Sharded restore on 8 real CPU devices: each leaf placed with its sharding, values equal to TF's.

The checkpoint is written by TF1 ``Saver`` with uneven partitions that do not line up with the
even device blocks, so region reads cross slice boundaries.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
import tf_writers
from tf2flax.errors import MappingError

# name: (shape, partitions, axis)
SPECS = {
    "model/emb": ((64, 12), 3, 0),     # TF rows 22/21/21 vs device blocks of 16 or 8
    "model/proj": ((12, 40), 3, 1),    # TF cols 14/13/13 vs device blocks of 20
    "model/w": ((16, 24), 1, 0),       # dense
    "model/b": ((24,), 1, 0),
}


def _value(name: str) -> np.ndarray:
    shape = SPECS[name][0]
    rng = np.random.default_rng(sum(name.encode()))
    return rng.standard_normal(int(np.prod(shape))).astype(np.float32).reshape(shape)


def write_checkpoint(directory: Path) -> str:
    T = tf_writers.tf()
    v1 = T.compat.v1
    g = T.Graph()
    with g.as_default():
        for name, (shape, parts, axis) in SPECS.items():
            if parts > 1:
                v1.get_variable(name, shape=shape, initializer=tf_writers._slice_initializer(_value(name)),
                                partitioner=v1.fixed_size_partitioner(parts, axis=axis))
            else:
                v1.Variable(_value(name), name=name)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            return v1.train.Saver().save(sess, str(directory / "model.ckpt"))


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> str:
    return write_checkpoint(tmp_path_factory.mktemp("sharding"))


@pytest.fixture(scope="module")
def reference(ckpt_path) -> dict[str, np.ndarray]:
    reader = tf_writers.tf().train.load_checkpoint(ckpt_path)
    return {name: reader.get_tensor(name) for name in SPECS}


MAPPING = {"model/": "params/"}


def _abstract(mesh, specs: dict[str, P], dtype=np.float32, shapes=None) -> dict:
    shapes = shapes or {n.split("/")[1]: SPECS[n][0] for n in SPECS}
    return {"params": {k: jax.ShapeDtypeStruct(shapes[k], dtype, sharding=NamedSharding(mesh, specs.get(k, P())))
                       for k in shapes}}


def _check(params: dict, reference: dict, mesh_specs: dict[str, P]) -> None:
    for key, array in params["params"].items():
        expected = reference[f"model/{key}"]
        assert isinstance(array, jax.Array)
        assert array.sharding.spec == mesh_specs.get(key, P())
        np.testing.assert_array_equal(np.asarray(array, dtype=np.float32), expected.astype(array.dtype).astype(np.float32))
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), expected.astype(array.dtype)[shard.index])


@pytest.mark.parametrize("mesh_shape,specs", [
    ((4, 2), {"emb": P("x", "y"), "proj": P("y", "x"), "w": P("x", None), "b": P()}),
    ((4, 2), {"emb": P(None, "y"), "proj": P(None, ("x", "y")), "w": P(("x", "y")), "b": P("y")}),
    ((8,), {"emb": P("x"), "proj": P(None, "x"), "w": P(None, "x"), "b": P("x")}),
])
def test_values_and_placement(ckpt_path, reference, mesh_shape, specs):
    names = ("x", "y")[: len(mesh_shape)]
    mesh = jax.make_mesh(mesh_shape, names)
    params, result = tf2flax.init_params(ckpt_path, MAPPING, _abstract(mesh, specs), return_report=True)
    _check(params, reference, specs)
    total = sum(v.nbytes for v in reference.values())
    # Every device region of every tensor is read, each byte about once.
    assert total <= result.stats.bytes_read <= 1.1 * total


def test_cast_to_bfloat16(ckpt_path, reference):
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    specs = {"emb": P("x", "y"), "w": P(None, "y")}
    params = tf2flax.init_params(ckpt_path, MAPPING, _abstract(mesh, specs, dtype=ml_dtypes.bfloat16))
    assert all(a.dtype == ml_dtypes.bfloat16 for a in params["params"].values())
    _check(params, reference, specs)


def test_transposed_target_reads_only_its_regions(ckpt_path, reference):
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    abstract = {"params": {"proj_t": jax.ShapeDtypeStruct((40, 12), np.float32,
                                                          sharding=NamedSharding(mesh, P("x", "y")))}}
    params, result = tf2flax.init_params(ckpt_path, {"model/proj": "params/proj_t"}, abstract,
                                         transforms={"params/proj_t": "transpose"}, return_report=True)
    array = params["params"]["proj_t"]
    np.testing.assert_array_equal(np.asarray(array), reference["model/proj"].T)
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), reference["model/proj"].T[shard.index])
    assert result.stats.full_reads == 0
    assert result.stats.bytes_read <= 1.1 * reference["model/proj"].nbytes


def test_partial_region_reads_only_overlapping_bytes(ckpt_path, reference):
    """A process holding a quarter of a leaf reads about a quarter of it (here: one device's rows)."""
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    sharding = NamedSharding(mesh, P("x", None))
    ckpt = tf2flax.open_checkpoint(ckpt_path)
    full = tf2flax.init_params(ckpt, {"model/emb": "params/emb"},
                               {"params": {"emb": jax.ShapeDtypeStruct((64, 12), np.float32, sharding=sharding)}})
    np.testing.assert_array_equal(np.asarray(full["params"]["emb"]), reference["model/emb"])
    before = ckpt.stats.bytes_read
    block = ckpt.read("model/emb", (slice(16, 32), slice(None)))
    assert ckpt.stats.bytes_read - before == block.nbytes == reference["model/emb"].nbytes // 4


def test_sharding_rules_and_mesh(ckpt_path, reference):
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    abstract = {"params": {k: jax.ShapeDtypeStruct(SPECS[f"model/{k}"][0], np.float32) for k in ("emb", "proj", "b")}}
    params = tf2flax.init_params(ckpt_path, MAPPING, abstract, mesh=mesh,
                                 sharding_rules=[(r"emb$", P("data", "model")), (r"proj$", P(None, "model"))])
    assert params["params"]["emb"].sharding.spec == P("data", "model")
    assert params["params"]["proj"].sharding.spec == P(None, "model")
    assert params["params"]["b"].sharding.spec == P()
    for k in ("emb", "proj", "b"):
        np.testing.assert_array_equal(np.asarray(params["params"][k]), reference[f"model/{k}"])


def test_shardings_pytree_and_function(ckpt_path, reference):
    mesh = jax.make_mesh((8,), ("x",))
    abstract = {"params": {"emb": jax.ShapeDtypeStruct((64, 12), np.float32)}}
    tree = {"params": {"emb": NamedSharding(mesh, P("x"))}}
    by_tree = tf2flax.init_params(ckpt_path, MAPPING, abstract, shardings=tree)
    by_fn = tf2flax.init_params(ckpt_path, MAPPING, abstract, shardings=lambda path, leaf: NamedSharding(mesh, P()) if path == "params/emb" else None)
    assert by_tree["params"]["emb"].sharding.spec == P("x")
    assert by_fn["params"]["emb"].sharding.spec == P()
    assert len(by_fn["params"]["emb"].addressable_shards) == 8
    for out in (by_tree, by_fn):
        np.testing.assert_array_equal(np.asarray(out["params"]["emb"]), reference["model/emb"])


def test_indivisible_sharding_fails_before_reading(ckpt_path):
    mesh = jax.make_mesh((8,), ("x",))
    ckpt = tf2flax.open_checkpoint(ckpt_path)
    abstract = {"params": {"emb": jax.ShapeDtypeStruct((64, 12), np.float32, sharding=NamedSharding(mesh, P(None, "x")))}}
    with pytest.raises(MappingError, match="params/emb"):
        tf2flax.init_params(ckpt, MAPPING, abstract)
    assert ckpt.stats.bytes_read == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_each_read_half(ckpt_path, reference, tmp_path):
    """Real multi-process JAX (jax.distributed on 127.0.0.1): 2 processes x 4 CPU devices, a (4, 2) mesh."""
    worker = Path(__file__).with_name("sharded_worker.py")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), ckpt_path, str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    total = sum(v.nbytes for v in reference.values())
    for i in range(2):
        read = int((tmp_path / f"bytes_read_{i}").read_text())
        assert 0.45 * total <= read <= 0.6 * total, (i, read, total)

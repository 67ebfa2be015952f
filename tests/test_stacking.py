"""Scanned layers: ``{i}`` in the assignment map stacks per-layer tensors, region by region.

The engine's rules on an in-memory checkpoint, then real TF1 checkpoints (with partitioned per-layer
variables) loaded onto 8 CPU devices with the layer axis sharded, unsharded and partially replicated.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
from family_writers import seeded, write_tf1_variables
from mapping_fakes import FakeCheckpoint
from tf_writers import tf_read_all
from tf2flax.errors import MappingError
from tf2flax.mapping import build_plan
from tf2flax.targets import flatten_targets

L, H, F = 4, 8, 16


def layer_values() -> dict[str, np.ndarray]:
    out = {}
    for i in range(L):
        out[f"bert/encoder/layer_{i}/attention/kernel"] = seeded((H, H), 10 + i)
        out[f"bert/encoder/layer_{i}/attention/bias"] = seeded((H,), 20 + i)
        out[f"bert/encoder/layer_{i}/ffn/kernel"] = seeded((H, F), 30 + i)
    out["bert/embeddings/table"] = seeded((16, H), 1)
    return out


def stacked_targets(axis: int = 0) -> dict:
    def at(shape):
        shape = list(shape)
        shape.insert(axis, L)
        return np.zeros(shape, np.float32)
    return {"params": {"layers": {"attention": {"kernel": at((H, H)), "bias": at((H,))},
                                  "ffn": {"kernel": at((H, F))}}}}


def expected_stack(values, name, axis=0):
    return np.stack([values[f"bert/encoder/layer_{i}/{name}"] for i in range(L)], axis=axis)


def plan(ckpt, mapping, params, **kw):
    return build_plan(ckpt, mapping, flatten_targets(params), **kw)


# ---- the engine ---------------------------------------------------------------------------

def test_scope_stacks_every_leaf_along_axis_0():
    values = layer_values()
    p = plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/": "params/layers/"}, stacked_targets())
    for name in ("attention/kernel", "attention/bias", "ffn/kernel"):
        np.testing.assert_array_equal(p.entries[f"params/layers/{name}"].read(), expected_stack(values, name))
    assert p.report.unused == ["bert/embeddings/table"] and not p.report.unset
    assert "stack[axis=0](bert/encoder/layer_0/attention/kernel .. bert/encoder/layer_3/attention/kernel)" \
        in p.report.matched["params/layers/attention/kernel"]


@pytest.mark.parametrize("stack_axis", [1, -2, {r"params/k": 1}])
def test_stack_axis_int_negative_and_by_regex(stack_axis):
    values = layer_values()
    targets = {"params": {"k": np.zeros((H, L, H), np.float32)}}
    p = plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/attention/kernel": "params/k"}, targets,
             stack_axis=stack_axis)
    np.testing.assert_array_equal(p.entries["params/k"].read(), expected_stack(values, "attention/kernel", 1))


def test_stack_axis_by_regex_first_match_wins_and_default_is_0():
    values = layer_values()
    targets = stacked_targets()
    targets["params"]["layers"]["ffn"]["kernel"] = np.zeros((H, L, F), np.float32)
    p = plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/": "params/layers/"}, targets,
             stack_axis={r".*/ffn/.*": 1})
    np.testing.assert_array_equal(p.entries["params/layers/ffn/kernel"].read(), expected_stack(values, "ffn/kernel", 1))
    with pytest.raises(MappingError, match="stacks 8 layers along axis 2"):
        plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/": "params/layers/"}, stacked_targets(),
             stack_axis={r".*/bias": 0, r".*": 2})


def test_region_reads_only_the_layers_and_sub_regions_it_covers():
    values = layer_values()
    ckpt = FakeCheckpoint(values)
    entry = plan(ckpt, {"bert/encoder/layer_{i}/": "params/layers/"}, stacked_targets()).entries[
        "params/layers/ffn/kernel"]
    assert not ckpt.reads
    block = entry.read((slice(1, 3), slice(2, 4), slice(0, 5)))
    np.testing.assert_array_equal(block, expected_stack(values, "ffn/kernel")[1:3, 2:4, 0:5])
    assert ckpt.reads == [(f"bert/encoder/layer_{i}/ffn/kernel", (slice(2, 4), slice(0, 5))) for i in (1, 2)]


@pytest.mark.parametrize("layers,message", [
    ([0, 1, 3], r"missing layer index\(es\) 2 \(found 0-1, 3\)"),
    ([0, 1, 2, 3, 4, 5], r"extra layer index\(es\) 4-5"),
    ([1, 2, 3, 4], r"missing layer index\(es\) 0; extra layer index\(es\) 4"),
])
def test_indices_must_run_0_to_L_minus_1(layers, message):
    values = {f"enc/layer_{i}/w": seeded((3,), i) for i in layers}
    with pytest.raises(MappingError, match=message) as e:
        plan(FakeCheckpoint(values), {"enc/layer_{i}/": "params/stack/"}, {"params": {"stack": {"w": np.zeros((L, 3))}}})
    assert "'params/stack/w' [4, 3] stacks 4 layers along axis 0" in str(e.value)


def test_layers_with_different_shapes_or_two_spellings_of_one_index_are_errors():
    values = {f"enc/layer_{i}/w": seeded((3,), i) for i in range(3)} | {"enc/layer_3/w": seeded((4,), 3)}
    with pytest.raises(MappingError, match=r"cannot stack layer 3 \(enc/layer_3/w: \[4\] float32\)"):
        plan(FakeCheckpoint(values), {"enc/layer_{i}/": "params/s/"}, {"params": {"s": {"w": np.zeros((4, 3))}}})
    values = {"enc/layer_0/w": seeded((3,), 0), "enc/layer_1/w": seeded((3,), 1), "enc/layer_01/w": seeded((3,), 2)}
    with pytest.raises(MappingError, match="enc/layer_01/w and enc/layer_1/w both match .enc/layer_{i}/w. with layer index 1"):
        plan(FakeCheckpoint(values), {"enc/layer_{i}/": "params/s/"}, {"params": {"s": {"w": np.zeros((2, 3))}}})


def test_no_match_and_bad_patterns_are_errors():
    values = layer_values()
    with pytest.raises(MappingError, match="no checkpoint name matches 'bert/encoder/layers_{i}/attention/bias'"):
        plan(FakeCheckpoint(values), {"bert/encoder/layers_{i}/": "params/layers/"}, stacked_targets())
    with pytest.raises(MappingError, match="exactly once"):
        plan(FakeCheckpoint(values), {"bert/{i}/layer_{i}/": "params/layers/"}, stacked_targets())
    with pytest.raises(MappingError, match="stack_axis must be an int"):
        plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/": "params/layers/"}, stacked_targets(), stack_axis="1")
    with pytest.raises(MappingError, match="does not fit target"):
        plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/": "params/layers/"}, stacked_targets(), stack_axis=3)


def test_zero_padded_indices_stack_in_numeric_order():
    values = {f"encoder/block_{i:03d}/w": seeded((2,), i) for i in range(12)}
    p = plan(FakeCheckpoint(values), {"encoder/block_{i}/w": "params/w"}, {"params": {"w": np.zeros((12, 2))}})
    np.testing.assert_array_equal(p.entries["params/w"].read(),
                                  np.stack([values[f"encoder/block_{i:03d}/w"] for i in range(12)]).astype(float))


def test_layer_index_on_both_sides_renames_layer_by_layer():
    values = {f"encoder/block_{i:03d}/w": seeded((2,), i) for i in range(3)}
    targets = {"params": {f"layers_{i}": {"w": np.zeros(2, np.float32)} for i in range(3)}}
    p = plan(FakeCheckpoint(values), {"encoder/block_{i}/": "params/layers_{i}/"}, targets)
    for i in range(3):
        np.testing.assert_array_equal(p.entries[f"params/layers_{i}/w"].read(), values[f"encoder/block_{i:03d}/w"])
    assert not p.report.unset and not p.report.unused


def test_stacked_target_with_transforms_and_cast():
    values = layer_values()
    targets = {"params": {"k": np.zeros((L, H, H), np.float16)}}
    p = plan(FakeCheckpoint(values), {"bert/encoder/layer_{i}/attention/kernel": "params/k"}, targets,
             transforms={"params/k": ("transpose", (0, 2, 1))})
    np.testing.assert_array_equal(p.entries["params/k"].read(),
                                  expected_stack(values, "attention/kernel").transpose(0, 2, 1).astype(np.float16))
    assert p.entries["params/k"].region_aware


# ---- real TF1 checkpoints, 8 CPU devices ------------------------------------------------------

@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """4 layers; the ffn kernels are partitioned per layer (3 slices along axis 1), over two files."""
    values = layer_values()
    partitioned = {f"bert/encoder/layer_{i}/ffn/kernel": (3, 1) for i in range(L)}
    partitioned["bert/encoder/layer_2/attention/kernel"] = (2, 0)
    prefix = write_tf1_variables(tmp_path_factory.mktemp("layered"), values, partitioned)
    return prefix, values


def abstract(mesh, specs: dict[str, P]) -> dict:
    shapes = {"attention/kernel": (L, H, H), "attention/bias": (L, H), "ffn/kernel": (L, H, F)}
    tree: dict = {}
    for name, shape in shapes.items():
        scope, leaf = name.split("/")
        tree.setdefault(scope, {})[leaf] = jax.ShapeDtypeStruct(
            shape, np.float32, sharding=NamedSharding(mesh, specs.get(name, P())))
    return {"params": {"layers": tree}}


@pytest.mark.parametrize("mesh_shape,specs", [
    ((8,), {"attention/kernel": P(None, "x"), "ffn/kernel": P(None, None, None)}),          # layer axis whole
    ((4, 2), {"attention/kernel": P("x", "y"), "attention/bias": P("x"), "ffn/kernel": P("x", None, "y")}),
    ((2, 4), {"attention/kernel": P("x"), "attention/bias": P("x"), "ffn/kernel": P("x", "y")}),  # replicated
])
def test_sharded_stacks_equal_tensorflow_values(layered, mesh_shape, specs):
    prefix, _ = layered
    reference = tf_read_all(prefix)
    mesh = jax.make_mesh(mesh_shape, ("x", "y")[: len(mesh_shape)])
    ckpt = tf2flax.open_checkpoint(prefix)
    params, result = tf2flax.init_params(ckpt, {"bert/encoder/layer_{i}/": "params/layers/"},
                                         abstract(mesh, specs), return_report=True)
    stacked_bytes = 0
    for scope, leaves in params["params"]["layers"].items():
        for leaf, array in leaves.items():
            want = expected_stack(reference, f"{scope}/{leaf}")
            stacked_bytes += want.nbytes
            assert array.sharding.spec == abstract(mesh, specs)["params"]["layers"][scope][leaf].sharding.spec
            for shard in array.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
    assert result.stats.full_reads == 0
    assert stacked_bytes <= result.stats.bytes_read <= 1.1 * stacked_bytes


def test_half_the_layers_read_about_half_the_bytes(layered):
    """What a process whose devices hold layers 0..1 of every stacked leaf reads (one process)."""
    prefix, values = layered
    ckpt = tf2flax.open_checkpoint(prefix)
    p = build_plan(ckpt, {"bert/encoder/layer_{i}/": "params/layers/"}, flatten_targets(stacked_targets()))
    total = sum(v.nbytes for k, v in values.items() if k.startswith("bert/encoder/"))
    before = ckpt.stats.bytes_read
    for target, entry in p.entries.items():
        block = entry.read((slice(0, L // 2),))
        np.testing.assert_array_equal(block, expected_stack(values, target[len("params/layers/"):])[: L // 2])
    assert ckpt.stats.bytes_read - before == total // 2




def test_two_processes_each_holding_half_the_layers_read_half(layered, tmp_path):
    """Real multi-process JAX (jax.distributed on 127.0.0.1): 2 processes x 4 CPU devices, the layer
    axis split over the processes."""
    prefix, values = layered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).with_name("stacked_worker.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), prefix, str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    total = sum(v.nbytes for k, v in values.items() if k.startswith("bert/encoder/"))
    for i in range(2):
        assert int((tmp_path / f"bytes_read_{i}").read_text()) == total // 2

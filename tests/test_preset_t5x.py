"""``preset="t5x"``: Mesh-TensorFlow T5 -> T5X names exactly as T5X's checkpoint_importer gives them.

The judge is ``t5x_importer_expected.json`` beside the real Mesh-TF checkpoint in
tests/data/realworld/t5x_mtf_tiny_t5/ (T5X's names for every tensor), and TF-written checkpoints with
Mesh-TF's naming for T5.1.0 and T5.1.1, loaded unscanned and scanned (sharded on 8 CPU devices).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax
from family_writers import t5_values, write_tf1_variables
from mapping_fakes import FakeCheckpoint
from tf2flax.mapping import build_plan
from tf2flax.targets import flatten_targets

REALWORLD = Path(__file__).resolve().parent / "data" / "realworld" / "t5x_mtf_tiny_t5"
EXPECTED = json.loads((REALWORLD / "t5x_importer_expected.json").read_text())


def dtype_of(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def tree(leaves: dict[str, tuple[list[int], str]], sharding=None) -> dict:
    """A nested abstract tree from ``{path: (shape, dtype)}``."""
    out: dict = {}
    for path, (shape, dtype) in leaves.items():
        *scopes, leaf = path.split("/")
        node = out
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = jax.ShapeDtypeStruct(tuple(shape), dtype_of(dtype), sharding=sharding(path) if sharding else None)
    return out


def scanned(leaves: dict[str, tuple[list[int], str]], layers: int) -> dict[str, tuple[list[int], str]]:
    """T5X's scanned names: ``<tower>/layers_N/x`` -> ``<tower>/layers/x`` with the layer axis at 1."""
    out = {}
    for path, (shape, dtype) in leaves.items():
        m = re.match(r"^(.*?/(?:encoder|decoder))/layers_\d+/(.*)$", path)
        if m:
            out[f"{m[1]}/layers/{m[2]}"] = (shape[:1] + [layers] + shape[1:], dtype)
        else:
            out[path] = (shape, dtype)
    return out


PARAMS = {f"target/{k}": (v["shape"], v["dtype"]) for k, v in EXPECTED["params_only"].items()}
TF_NAMES = {f"target/{k}": v["tf_name"] for k, v in EXPECTED["params_only"].items()}


def check_importer_names(plan) -> None:
    assert set(plan.entries) == set(PARAMS)
    for target, entry in plan.entries.items():
        assert entry.describe() == f"{target} <- {TF_NAMES[target]}"
        assert list(entry.shape) == PARAMS[target][0] and entry.dtype == dtype_of(PARAMS[target][1])
    assert not plan.report.unused and not plan.report.unset


def check_scanned_names(plan) -> None:
    want = scanned(PARAMS, 2)
    assert set(plan.entries) == set(want)
    for target, entry in plan.entries.items():
        m = re.match(r"^(target/(?:encoder|decoder))/layers/(.*)$", target)
        layers = [TF_NAMES[f"{m[1]}/layers_{i}/{m[2]}"] for i in range(2)] if m else None
        source = f"stack[axis=1]({layers[0]} .. {layers[1]})" if m else TF_NAMES[target]
        assert entry.describe() == f"{target} <- {source}"
        assert list(entry.shape) == want[target][0]
    assert not plan.report.unused and not plan.report.unset


def test_dry_run_on_the_real_checkpoint_gives_the_importers_params():
    check_importer_names(tf2flax.plan_params(REALWORLD, None, tree(PARAMS), preset="t5x"))


def test_scanned_dry_run_on_the_real_checkpoint():
    check_scanned_names(tf2flax.plan_params(REALWORLD, None, tree(scanned(PARAMS, 2)), preset="t5x"))


def json_checkpoint() -> FakeCheckpoint:
    """Every tensor the JSON lists, with its Mesh-TF name, shape and dtype (values are zeros)."""
    tensors = {v["tf_name"]: np.zeros(v.get("tf_shape", v["shape"]), dtype_of(v.get("tf_dtype", v["dtype"])))
               for v in EXPECTED["full_state"].values() if v.get("tf_name")}
    return FakeCheckpoint(tensors, path=str(REALWORLD))


def test_names_and_shapes_from_the_importer_json_unscanned_and_scanned():
    check_importer_names(build_plan(json_checkpoint(), None, flatten_targets(tree(PARAMS)), preset="t5x"))
    check_scanned_names(build_plan(json_checkpoint(), None, flatten_targets(tree(scanned(PARAMS, 2))), preset="t5x"))


def test_adafactor_slots_take_the_importers_state_names():
    slots = {k: v for k, v in EXPECTED["full_state"].items()
             if k.startswith("state/param_states/") and v.get("tf_name")}
    targets = {k: (v["shape"], v["dtype"]) for k, v in slots.items()}
    plan = build_plan(json_checkpoint(), None, flatten_targets(tree(targets)), preset="t5x")
    assert {t: e.describe() for t, e in plan.entries.items()} == {k: f"{k} <- {v['tf_name']}" for k, v in slots.items()}


@pytest.mark.parametrize("case", list(EXPECTED["t5x_test_expectations"]))
def test_t5x_importer_test_expectations(case):
    spec = EXPECTED["t5x_test_expectations"][case]
    ckpt = FakeCheckpoint({n: np.zeros((2, 4), np.float32) for n in spec["input"]})
    targets = {path: ([2, 4], "float32") for path in spec["expected"]}
    plan = build_plan(ckpt, None, flatten_targets(tree(targets)), preset="t5x")
    assert {t: e.describe() for t, e in plan.entries.items()} == {
        t: f"{t} <- {n}" for t, n in zip(spec["expected"], spec["input"])}


def test_decoder_only_and_untied_tower_embeddings():
    names = ["transformer/embedding", "transformer/block_000/layer_000/SelfAttention/q",
             "transformer/block_000/layer_000/rms_norm/scale", "transformer/block_000/layer_001/rms_norm/scale",
             "transformer/rms_norm/scale", "transformer/logits/kernel", "encoder/embedding"]
    expected = ["target/decoder/token_embedder/embedding", "target/decoder/layers_0/self_attention/query/kernel",
                "target/decoder/layers_0/pre_self_attention_layer_norm/scale",
                "target/decoder/layers_0/pre_mlp_layer_norm/scale", "target/decoder/decoder_norm/scale",
                "target/decoder/logits_dense/kernel", "target/encoder/token_embedder/embedding"]
    ckpt = FakeCheckpoint({n: np.zeros(3, np.float32) for n in names})
    plan = build_plan(ckpt, None, flatten_targets(tree({t: ([3], "float32") for t in expected})), preset="t5x")
    assert {t: e.describe() for t, e in plan.entries.items()} == {t: f"{t} <- {n}" for t, n in zip(expected, names)}


# ---- TF-written Mesh-TF checkpoints ------------------------------------------------------------

def importer_names(version: str, layers: int = 2) -> dict[str, str]:
    """T5X's name for every parameter of :func:`t5_values` (written out by hand from the importer)."""
    t11 = version == "1.1"
    norm, final = ("rms_norm", "rms_norm") if t11 else ("layer_norm", "final_layer_norm")
    out = {"target/token_embedder/embedding": "shared/embedding"}
    for b in range(layers):
        e, d = f"encoder/block_{b:03d}", f"decoder/block_{b:03d}"
        for m, full in zip("qkvo", ("query", "key", "value", "out")):
            out[f"target/encoder/layers_{b}/attention/{full}/kernel"] = f"{e}/layer_000/SelfAttention/{m}"
            out[f"target/decoder/layers_{b}/self_attention/{full}/kernel"] = f"{d}/layer_000/SelfAttention/{m}"
            out[f"target/decoder/layers_{b}/encoder_decoder_attention/{full}/kernel"] = f"{d}/layer_001/EncDecAttention/{m}"
        for wi in (["wi_0", "wi_1"] if t11 else ["wi"]):
            out[f"target/encoder/layers_{b}/mlp/{wi}/kernel"] = f"{e}/layer_001/DenseReluDense/{wi}/kernel"
            out[f"target/decoder/layers_{b}/mlp/{wi}/kernel"] = f"{d}/layer_002/DenseReluDense/{wi}/kernel"
        out[f"target/encoder/layers_{b}/mlp/wo/kernel"] = f"{e}/layer_001/DenseReluDense/wo/kernel"
        out[f"target/decoder/layers_{b}/mlp/wo/kernel"] = f"{d}/layer_002/DenseReluDense/wo/kernel"
        out[f"target/encoder/layers_{b}/pre_attention_layer_norm/scale"] = f"{e}/layer_000/{norm}/scale"
        out[f"target/encoder/layers_{b}/pre_mlp_layer_norm/scale"] = f"{e}/layer_001/{norm}/scale"
        out[f"target/decoder/layers_{b}/pre_self_attention_layer_norm/scale"] = f"{d}/layer_000/{norm}/scale"
        out[f"target/decoder/layers_{b}/pre_cross_attention_layer_norm/scale"] = f"{d}/layer_001/{norm}/scale"
        out[f"target/decoder/layers_{b}/pre_mlp_layer_norm/scale"] = f"{d}/layer_002/{norm}/scale"
        if t11:
            for tower, src in (("encoder", e), ("decoder", d)):
                out[f"target/{tower}/layers_{b}/relpos_bias/rel_embedding"] = \
                    f"{src}/layer_000/SelfAttention/relative_attention_bias"
    if not t11:
        out["target/encoder/relpos_bias/rel_embedding"] = "encoder/block_000/layer_000/SelfAttention/relative_attention_bias"
        out["target/decoder/relpos_bias/rel_embedding"] = "decoder/block_000/layer_000/SelfAttention/relative_attention_bias"
    out["target/encoder/encoder_norm/scale"] = f"encoder/{final}/scale"
    out["target/decoder/decoder_norm/scale"] = f"decoder/{final}/scale"
    if t11:
        out["target/decoder/logits_dense/kernel"] = "decoder/logits/kernel"
    return out


@pytest.fixture(scope="module", params=["1.0", "1.1"])
def mtf(request, tmp_path_factory):
    values = t5_values(request.param)
    prefix = write_tf1_variables(tmp_path_factory.mktemp(f"t5_{request.param}"), values)
    return request.param, prefix, values


def test_tf_written_t5_loads_with_importer_names(mtf):
    version, prefix, values = mtf
    names = importer_names(version)
    params = {t: (list(values[n].shape), "bfloat16") for t, n in names.items()}
    loaded, result = tf2flax.init_params(prefix, None, tree(params), preset="t5x", strict=True, return_report=True)
    flat = {t: leaf.value for t, leaf in flatten_targets(loaded).items()}
    assert set(flat) == set(names)
    for target, name in names.items():
        np.testing.assert_array_equal(np.asarray(flat[target]), values[name])
    assert sorted(result.report.skipped) == sorted(
        n for n in values if "_slot_" in n or n == "global_step")


def test_convert_with_the_preset_leaves_adafactor_slots_out_unless_asked(mtf, tmp_path):
    """docs/presets.md: the Adafactor slots are optimizer state, left out of a conversion unless
    include_optimizer (--include-optimizer), as global_step is."""
    import subprocess
    import sys

    version, prefix, values = mtf
    slots = sorted(n for n in values if "_slot_" in n)
    assert slots
    result = tf2flax.convert(prefix, tmp_path / "out", preset="t5x", dry_run=True)
    assert set(result.plan.entries) == set(importer_names(version))
    assert not [p for p in result.plan.entries if p.startswith("state/")]
    assert sorted(n for n, why in result.left_out if why == "optimizer state") == slots
    kept = tf2flax.convert(prefix, tmp_path / "out", preset="t5x", dry_run=True, include_optimizer=True)
    assert len([p for p in kept.plan.entries if p.startswith("state/param_states/")]) == len(slots)
    r = subprocess.run([sys.executable, "-m", "tf2flax", "convert", prefix, str(tmp_path / "cli"), "--preset", "t5x",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import orbax.checkpoint as ocp

    written = ocp.v1.metadata(str(tmp_path / "cli")).metadata
    assert set(written) == {"target"}, set(written)


def test_tf_written_t5_scanned_on_8_devices(mtf):
    version, prefix, values = mtf
    names = importer_names(version)
    params = scanned({t: (list(values[n].shape), "bfloat16") for t, n in names.items()}, 2)
    mesh = jax.make_mesh((2, 4), ("layers", "model"))

    def sharding(path):
        if "/layers/" in path:
            rank = len(params[path][0])
            return NamedSharding(mesh, P(*([None, "layers"] + (["model"] if rank == 3 else []))))
        return NamedSharding(mesh, P())

    loaded, result = tf2flax.init_params(prefix, None, tree(params, sharding), preset="t5x", strict=True,
                                         return_report=True)
    for target, array in {t: leaf.value for t, leaf in flatten_targets(loaded).items()}.items():
        m = re.match(r"^(target/(?:encoder|decoder))/layers/(.*)$", target)
        want = (np.stack([values[names[f"{m[1]}/layers_{i}/{m[2]}"]] for i in range(2)], axis=1) if m
                else values[names[target]])
        assert array.shape == want.shape
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
    assert result.stats.full_reads == 0
    assert ("relpos_bias" in str(loaded["target"]["encoder"]["layers"])) == (version == "1.1")


def test_params_tree_without_the_target_level():
    params = {k[len("target/"):]: v for k, v in PARAMS.items()}
    plan = build_plan(json_checkpoint(), {"target/": "/"}, flatten_targets(tree(params)), preset="t5x")
    assert {t: e.describe() for t, e in plan.entries.items()} == {
        t: f"{t} <- {TF_NAMES['target/' + t]}" for t in params}


def test_preview_of_the_real_checkpoint_names_every_tensor_as_the_importer():
    from tf2flax.mapping.presets import preview

    shown = preview("t5x", tf2flax.open_checkpoint(REALWORLD))
    for target, v in EXPECTED["full_state"].items():
        if v.get("tf_name"):
            assert shown[v["tf_name"]]["becomes"] == target
    assert shown["encoder/block_001/layer_000/SelfAttention/k"]["scanned"] == "target/encoder/layers/attention/key/kernel[1]"
    assert shown["encoder/block_001/layer_000/SelfAttention/k_slot_v"]["left_out"] == "optimizer state"

"""Target trees: flattening to named leaves and putting values back (dicts, FrozenDict, SDS, NNX)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict, freeze

from tf2flax.errors import MappingError
from tf2flax.targets import flatten_targets, handle_index, unflatten_targets


class Small(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs)])
        self.drop = nnx.Dropout(0.5, rngs=rngs)


def test_linen_variables_paths_include_collection() -> None:
    variables = freeze({"params": {"Dense_0": {"kernel": np.zeros((2, 3), np.float32)}},
                        "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros(3, jnp.bfloat16)}}})
    leaves = flatten_targets(variables)
    assert sorted(leaves) == ["batch_stats/BatchNorm_0/mean", "params/Dense_0/kernel"]
    assert leaves["params/Dense_0/kernel"].shape == (2, 3)
    assert leaves["batch_stats/BatchNorm_0/mean"].dtype == jnp.bfloat16
    new = unflatten_targets(variables, {"params/Dense_0/kernel": np.ones((2, 3), np.float32)})
    assert isinstance(new, FrozenDict)
    np.testing.assert_array_equal(new["params"]["Dense_0"]["kernel"], 1)
    assert new["batch_stats"]["BatchNorm_0"]["mean"] is variables["batch_stats"]["BatchNorm_0"]["mean"]


def test_shape_dtype_struct_leaves_keep_sharding() -> None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=sharding), "b": jax.ShapeDtypeStruct((2,), jnp.int8)}
    leaves = flatten_targets(tree)
    assert leaves["w"].sharding == sharding and leaves["b"].sharding is None
    assert leaves["b"].dtype == jnp.int8
    new = unflatten_targets(tree, {"w": np.zeros((4, 2), np.float32)})
    assert isinstance(new["w"], np.ndarray) and isinstance(new["b"], jax.ShapeDtypeStruct)


def test_nnx_module_paths_rng_state_excluded_and_updated_in_place() -> None:
    model = Small(nnx.Rngs(0))
    leaves = flatten_targets(model)
    assert "layers/0/kernel" in leaves and "layers/1/mean" in leaves
    assert not any(p.startswith("drop/") for p in leaves)
    kernel = model.layers[0].kernel
    assert leaves["layers/0/kernel"].value is kernel
    out = unflatten_targets(model, {"layers/0/kernel": np.full((2, 3), 5, np.float32),
                                    "layers/1/mean": np.ones(3, np.float32)})
    assert out is model
    np.testing.assert_array_equal(model.layers[0].kernel[...], 5)
    np.testing.assert_array_equal(model.layers[1].mean[...], 1)


def test_nnx_state_gives_a_new_state_and_leaves_the_module_alone() -> None:
    model = Small(nnx.Rngs(0))
    state = nnx.state(model)
    before = np.asarray(model.layers[0].bias[...])
    new = unflatten_targets(state, {"layers/0/bias": np.full(3, 7, np.float32)})
    assert isinstance(new, nnx.State)
    np.testing.assert_array_equal(new["layers"][0]["bias"][...], 7)
    assert isinstance(new["layers"][0]["bias"], nnx.Param)
    np.testing.assert_array_equal(model.layers[0].bias[...], before)


def test_handles_resolve_by_identity() -> None:
    model = Small(nnx.Rngs(0))
    index = handle_index(flatten_targets(model))
    assert index[id(model.layers[0].kernel)] == ["layers/0/kernel"]


def test_colliding_and_unknown_paths_are_errors() -> None:
    with pytest.raises(MappingError, match="same name 'a/b'"):
        flatten_targets({"a/b": np.zeros(1), "a": {"b": np.zeros(1)}})
    with pytest.raises(MappingError, match="not leaves"):
        unflatten_targets({"a": np.zeros(1)}, {"b": np.zeros(1)})

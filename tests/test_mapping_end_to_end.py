"""End to end: a trained Keras 3 model's TF2 checkpoint loaded into a Flax linen and an NNX model.

The Keras model (Embedding, MultiHeadAttention, LayerNormalization, Dense, BatchNormalization, Dense)
is trained a few steps with Adam and saved with ``tf.train.Checkpoint(model=..., optimizer=...)``,
so its trainable variables are keyed through the optimizer. Both Flax models must reproduce the
Keras model's inference outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tf2flax import open_checkpoint
from tf2flax.restore import init_params
from tf_writers import tf

VOCAB, SEQ, DIM = 11, 5, 8


@dataclasses.dataclass(frozen=True)
class KerasRun:
    prefix: str
    inputs: np.ndarray
    outputs: np.ndarray


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory) -> KerasRun:
    T = tf()
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, name="embed")(ids)
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attn")(x, x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Dense(6, name="d1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(3, name="d2")(x)
    model = keras.Model(ids, x)
    opt = keras.optimizers.Adam(1e-2)
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, VOCAB, (16, SEQ)).astype(np.int32)
    model.fit(inputs, rng.random((16, SEQ, 3)), verbose=0, epochs=2, batch_size=8)
    prefix = T.train.Checkpoint(model=model, optimizer=opt).save(str(Path(tmp_path_factory.mktemp("keras")) / "ckpt"))
    return KerasRun(prefix, inputs, np.asarray(model(inputs, training=False)))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nn.Embed(VOCAB, DIM)(ids)
        x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=DIM, out_features=DIM)(x, x)
        x = nn.LayerNorm(epsilon=1e-3)(x)
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x)
        return nn.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=DIM, qkv_features=DIM, out_features=DIM,
                                           decode=False, rngs=rngs)
        self.ln = nnx.LayerNorm(DIM, epsilon=1e-3, rngs=rngs)
        self.d1 = nnx.Linear(DIM, 6, rngs=rngs)
        self.bn = nnx.BatchNorm(6, epsilon=1e-3, use_running_average=True, rngs=rngs)
        self.d2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.attn(self.embed(ids))
        return self.d2(self.bn(self.d1(self.ln(x))))


LINEN_MAP = [
    ("embed/", "params/Embed_0/"),
    ("attn/", "params/MultiHeadDotProductAttention_0/"),
    ("ln/", "params/LayerNorm_0/"),
    ("d1/", "params/Dense_0/"),
    ("bn/", "params/BatchNorm_0/"),
    ("bn/", "batch_stats/BatchNorm_0/"),
    ("d2/", "params/Dense_1/"),
]


def test_linen_model_from_keras_checkpoint(keras_run: KerasRun) -> None:
    model = LinenNet()
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
    variables = init_params(keras_run.prefix, LINEN_MAP, abstract, preset="keras", strict=True)
    np.testing.assert_allclose(model.apply(variables, keras_run.inputs), keras_run.outputs, rtol=1e-4, atol=1e-5)


def test_nnx_model_from_keras_checkpoint_by_preset_alone(keras_run: KerasRun) -> None:
    model = NnxNet(nnx.Rngs(1))
    out = init_params(keras_run.prefix, None, model, preset="keras", strict=True)
    assert out is model
    np.testing.assert_allclose(model(keras_run.inputs), keras_run.outputs, rtol=1e-4, atol=1e-5)


def test_nnx_variable_handles_and_bfloat16(keras_run: KerasRun) -> None:
    model = nnx.Linear(6, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    init_params(keras_run.prefix, {"d2/kernel": model.kernel, "d2/bias": model.bias}, model)
    ckpt = open_checkpoint(keras_run.prefix)
    want = ckpt.read(next(v.key for v in ckpt.object_graph.variables if v.full_name == "d2/kernel"))
    assert model.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.kernel[...], np.float32),
                                  want.astype(jnp.bfloat16).astype(np.float32))

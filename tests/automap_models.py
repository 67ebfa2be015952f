"""Model pairs for the ``mapping="auto"`` tests: TensorFlow/Keras writes each checkpoint, and a Flax NNX
model is written the way a Flax user writes it (idiomatic NNX names, not TensorFlow's).

Each ``write_*`` function builds a small TF/Keras model with fixed seeds, saves it (``tf.train.Checkpoint``,
a SavedModel, or a TF1 name-based ``Saver``) under ``directory`` and returns ``(checkpoint path, input,
TF's output)``. Each NNX class has ``__call__(x)`` computing the same function, so after
``init_params(ckpt, "auto", nnx.state(model))`` its output must equal TF's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _keras():
    from tf_writers import tf

    tf()
    import keras

    keras.utils.set_random_seed(0)
    return keras


def _randomize(model, seed: int = 0) -> None:
    """Give every variable (moving statistics included) distinct random values, so a swap shows."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        value = rng.normal(size=shape).astype(np.float32) * 0.5
        if "variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value)


def _save_ckpt(model, directory: Path) -> str:
    from tf_writers import tf

    return tf().train.Checkpoint(model=model).write(str(directory / "ckpt"))


# ------------------------------------------------------------------------------------------------
# TensorFlow side
# ------------------------------------------------------------------------------------------------

def write_mlp(directory: Path):
    """Keras Sequential 8 -> 16 -> 16 -> 16 -> 4 (two same-shape layers in a row), tf.train.Checkpoint."""
    keras = _keras()
    from keras import layers

    model = keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="relu"),
                              layers.Dense(16, activation="relu"), layers.Dense(16, activation="relu"),
                              layers.Dense(4)])
    _randomize(model, 1)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    return _save_ckpt(model, directory), x, np.asarray(model(x))


def write_cnn(directory: Path, keras_file: bool = False):
    """Keras functional Conv-BN-ReLU x2 (two BatchNorms of 8 channels), pooling, Dense; tf.train.Checkpoint
    (or, with ``keras_file``, ``model.save("cnn.keras")``)."""
    keras = _keras()
    from keras import layers

    inp = keras.Input((8, 8, 3))
    h = layers.Conv2D(8, 3, padding="same")(inp)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.Conv2D(8, 3, padding="same")(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    out = layers.Dense(5)(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    _randomize(model, 2)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    if keras_file:
        model.save(str(directory / "cnn.keras"))
        return str(directory / "cnn.keras"), x, np.asarray(model(x, training=False))
    return _save_ckpt(model, directory), x, np.asarray(model(x, training=False))


def write_resnet(directory: Path, keras_names: bool = False):
    """A small Keras ResNet (stem, two residual blocks of two 3x3 convs + BN, a projection shortcut in
    the second, a head), saved as a SavedModel with ``tf.saved_model.save``; with ``keras_names`` its
    layers keep Keras's own names (``conv2d_3``) and it is saved with ``tf.train.Checkpoint``."""
    keras = _keras()
    from tf_writers import tf
    from keras import layers

    def name(text: str) -> dict:
        return {} if keras_names else {"name": text}

    inp = keras.Input((8, 8, 3))
    h = layers.Conv2D(8, 3, padding="same", **name("stem_conv"))(inp)
    h = layers.ReLU()(layers.BatchNormalization(**name("stem_bn"))(h))
    for b, (width, stride) in enumerate([(8, 1), (16, 2)]):
        y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, **name(f"block{b}_conv1"))(h)
        y = layers.ReLU()(layers.BatchNormalization(**name(f"block{b}_bn1"))(y))
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, **name(f"block{b}_conv2"))(y)
        y = layers.BatchNormalization(**name(f"block{b}_bn2"))(y)
        if stride != 1:
            h = layers.Conv2D(width, 1, strides=stride, use_bias=False, **name(f"block{b}_proj"))(h)
        h = layers.ReLU()(layers.Add()([h, y]))
    out = layers.Dense(5, **name("head"))(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    _randomize(model, 3)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    if keras_names:
        return _save_ckpt(model, directory), x, np.asarray(model(x, training=False))
    path = str(directory / "saved_model")
    tf().saved_model.save(model, path)
    return path, x, np.asarray(model(x, training=False))


def write_depthwise(directory: Path):
    """A MobileNet block: DepthwiseConv2D (multiplier 2) + BN + ReLU, pointwise Conv2D + BN; tf.train.Checkpoint."""
    keras = _keras()
    from keras import layers

    inp = keras.Input((6, 6, 4))
    h = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.Conv2D(6, 1)(h)
    out = layers.BatchNormalization()(h)
    model = keras.Model(inp, out)
    _randomize(model, 4)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype(np.float32)
    return _save_ckpt(model, directory), x, np.asarray(model(x, training=False))


def write_transformer(directory: Path, d: int = 16, heads: int = 2, ff: int = 32, vocab: int = 20, blocks: int = 2):
    """Keras functional encoder: token embedding, ``blocks`` post-norm blocks (MultiHeadAttention,
    LayerNormalization, Dense-ReLU-Dense, LayerNormalization); tf.train.Checkpoint."""
    keras = _keras()
    from keras import layers

    inp = keras.Input((5,), dtype="int32")
    h = layers.Embedding(vocab, d)(inp)
    for _ in range(blocks):
        a = layers.MultiHeadAttention(heads, d // heads)(h, h)
        h = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([h, a]))
        f = layers.Dense(d)(layers.Dense(ff, activation="relu")(h))
        h = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([h, f]))
    model = keras.Model(inp, h)
    _randomize(model, 5)
    x = np.random.default_rng(0).integers(0, vocab, size=(2, 5)).astype(np.int32)
    return _save_ckpt(model, directory), x, np.asarray(model(x))


def write_subclassed_transformer(directory: Path, d: int = 16, heads: int = 2, ff: int = 32, vocab: int = 20):
    """A subclassed Keras encoder: custom ``Block`` layers (MultiHeadAttention ``att``, ``ln1``, ``ffn1``,
    ``ffn2``, ``ln2``) held as ``block_0``, ``block_1``, and a ``head``; tf.train.Checkpoint."""
    keras = _keras()
    from keras import layers

    class Block(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.att = layers.MultiHeadAttention(heads, d // heads)
            self.ln1 = layers.LayerNormalization(epsilon=1e-6)
            self.ffn1 = layers.Dense(ff, activation="relu")
            self.ffn2 = layers.Dense(d)
            self.ln2 = layers.LayerNormalization(epsilon=1e-6)

        def call(self, x):
            x = self.ln1(x + self.att(x, x))
            return self.ln2(x + self.ffn2(self.ffn1(x)))

    class Encoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = layers.Embedding(vocab, d)
            self.block_0, self.block_1 = Block(), Block()
            self.head = layers.Dense(3)

        def call(self, x):
            return self.head(self.block_1(self.block_0(self.emb(x))))

    model = Encoder()
    x = np.random.default_rng(0).integers(0, vocab, size=(2, 5)).astype(np.int32)
    model(x)
    _randomize(model, 11)
    return _save_ckpt(model, directory), x, np.asarray(model(x))


def write_tf1_mlp(directory: Path):
    """A TF1 graph (``tf.compat.v1``) MLP with scopes ``mlp/hidden_0`` .. ``mlp/hidden_2`` (16 -> 16,
    same shapes) and ``mlp/logits``, plus a ``global_step``; saved by a name-based ``Saver``."""
    from tf_writers import tf

    tf1 = tf().compat.v1
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    graph = tf().Graph()
    with graph.as_default():
        h = tf1.constant(x)
        for name, width in [("hidden_0", 16), ("hidden_1", 16), ("hidden_2", 16), ("logits", 3)]:
            with tf1.variable_scope(f"mlp/{name}"):
                w = tf1.get_variable("kernel", initializer=rng.normal(size=(16, width)).astype(np.float32))
                b = tf1.get_variable("bias", initializer=rng.normal(size=(width,)).astype(np.float32))
            h = tf().matmul(h, w) + b
            if name != "logits":
                h = tf().nn.relu(h)
        tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            out = sess.run(h)
            path = saver.save(sess, str(directory / "model.ckpt"))
    return path, x, out


def write_exported(directory: Path):
    """A Keras Sequential (Dense, BatchNormalization, Dense) exported with ``model.export()``: a
    SavedModel whose variables are flat lists (``variables/3`` and a copy under ``_all_variables/5``)."""
    keras = _keras()
    from keras import layers

    model = keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu"), layers.BatchNormalization(),
                              layers.Dense(3)])
    _randomize(model, 10)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    path = str(directory / "exported")
    model.export(path, verbose=False)
    return path, x, np.asarray(model(x, training=False))


def write_lstm(directory: Path):
    """A Keras LSTM (fused i, f, c, o gates) + Dense; tf.train.Checkpoint."""
    keras = _keras()
    from keras import layers

    model = keras.Sequential([keras.Input((4, 3)), layers.LSTM(5), layers.Dense(2)])
    _randomize(model, 7)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    return _save_ckpt(model, directory), x, np.asarray(model(x))


# ------------------------------------------------------------------------------------------------
# Flax side (NNX, as a Flax user writes it)
# ------------------------------------------------------------------------------------------------

def nnx_models():
    """The NNX model classes (imported lazily: flax is slow to import)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, sizes, *, rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    class Unordered(nnx.Module):
        """The same MLP with names that carry no order: auto must refuse."""

        def __init__(self, *, rngs):
            self.inp = nnx.Linear(8, 16, rngs=rngs)
            self.alpha = nnx.Linear(16, 16, rngs=rngs)
            self.beta = nnx.Linear(16, 16, rngs=rngs)
            self.out = nnx.Linear(16, 4, rngs=rngs)

    class CNN(nnx.Module):
        def __init__(self, *, rngs):
            self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(8, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
            self.bn2 = nnx.BatchNorm(8, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.head = nnx.Linear(8, 5, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn1(self.conv1(x)))
            x = nnx.relu(self.bn2(self.conv2(x)))
            return self.head(x.mean(axis=(1, 2)))

    class CNNWithExtra(CNN):
        """The CNN plus a layer the checkpoint does not have: auto must refuse, naming it."""

        def __init__(self, *, rngs):
            super().__init__(rngs=rngs)
            self.aux_head = nnx.Linear(8, 7, rngs=rngs)

    class Block(nnx.Module):
        def __init__(self, cin, cout, stride, *, rngs):
            bn = dict(epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
            self.norm1 = nnx.BatchNorm(cout, **bn)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
            self.norm2 = nnx.BatchNorm(cout, **bn)
            self.shortcut = (nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                             if stride != 1 else None)

        def __call__(self, x):
            y = nnx.relu(self.norm1(self.conv1(x)))
            y = self.norm2(self.conv2(y))
            return nnx.relu((self.shortcut(x) if self.shortcut is not None else x) + y)

    class ResNet(nnx.Module):
        def __init__(self, *, rngs):
            self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.stem_norm = nnx.BatchNorm(8, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.blocks = nnx.List([Block(8, 8, 1, rngs=rngs), Block(8, 16, 2, rngs=rngs)])
            self.classifier = nnx.Linear(16, 5, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem_norm(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            return self.classifier(x.mean(axis=(1, 2)))

    class Depthwise(nnx.Module):
        def __init__(self, *, rngs):
            bn = dict(epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.depthwise = nnx.Conv(4, 8, (3, 3), feature_group_count=4, rngs=rngs)
            self.depthwise_norm = nnx.BatchNorm(8, **bn)
            self.pointwise = nnx.Conv(8, 6, (1, 1), rngs=rngs)
            self.pointwise_norm = nnx.BatchNorm(6, **bn)

        def __call__(self, x):
            x = nnx.relu(self.depthwise_norm(self.depthwise(x)))
            return self.pointwise_norm(self.pointwise(x))

    class EncoderBlock(nnx.Module):
        def __init__(self, d, heads, ff, *, rngs):
            self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
            self.norm1 = nnx.LayerNorm(d, epsilon=1e-6, rngs=rngs)
            self.mlp = nnx.List([nnx.Linear(d, ff, rngs=rngs), nnx.Linear(ff, d, rngs=rngs)])
            self.norm2 = nnx.LayerNorm(d, epsilon=1e-6, rngs=rngs)

        def __call__(self, x):
            x = self.norm1(x + self.attn(x, deterministic=True))
            return self.norm2(x + self.mlp[1](nnx.relu(self.mlp[0](x))))

    class EncoderWithHead(nnx.Module):
        def __init__(self, *, rngs):
            self.embed = nnx.Embed(20, 16, rngs=rngs)
            self.layers = nnx.List([EncoderBlock(16, 2, 32, rngs=rngs) for _ in range(2)])
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            x = self.embed(x)
            for layer in self.layers:
                x = layer(x)
            return self.out(x)

    class Encoder(nnx.Module):
        def __init__(self, d=16, heads=2, ff=32, vocab=20, blocks=2, *, rngs):
            self.embed = nnx.Embed(vocab, d, rngs=rngs)
            self.blocks = nnx.List([EncoderBlock(d, heads, ff, rngs=rngs) for _ in range(blocks)])

        def __call__(self, x):
            x = self.embed(x)
            for block in self.blocks:
                x = block(x)
            return x

    class LSTMNet(nnx.Module):
        def __init__(self, *, rngs):
            self.cell = nnx.OptimizedLSTMCell(3, 5, rngs=rngs)
            self.head = nnx.Linear(5, 2, rngs=rngs)

    return dict(MLP=MLP, Unordered=Unordered, CNN=CNN, CNNWithExtra=CNNWithExtra, ResNet=ResNet,
                Depthwise=Depthwise, Encoder=Encoder, EncoderWithHead=EncoderWithHead, LSTMNet=LSTMNet, jax=jax,
                jnp=jnp, nnx=nnx)

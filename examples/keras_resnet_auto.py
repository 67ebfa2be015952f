"""A Keras ResNet-style CNN into a hand-written Flax NNX model with ``mapping="auto"``: no map.

The Keras model uses Keras's own layer names (``conv2d_3``, ``batch_normalization_2``, ...), is trained
a few steps and saved with its Adam optimizer (``tf.train.Checkpoint``). The NNX model names its parts
the way a Flax user does (``stem``, ``blocks[i].conv1``, ``blocks[i].norm2``, ``blocks[i].shortcut``,
``classifier``). Auto pairs them by shapes, structure and order (the checkpoint's object graph orders
Keras's layers; the NNX model's attribute order orders its own, which is why the model itself is
passed: ``nnx.state(model)`` is sorted by name) and says so in its report.

Run it (needs TensorFlow and Keras to *write* the checkpoint)::

    python examples/keras_resnet_auto.py

It prints the decisions and ``max |flax - keras|``, and exits non-zero above ``--tol``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

IMAGE, CLASSES, WIDTHS = (16, 16, 3), 10, (8, 16)


def keras_resnet(steps: int, directory: str):
    """Build, train ``steps`` steps and save the Keras ResNet; returns (checkpoint prefix, model)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input(IMAGE)
    x = L.ReLU()(L.BatchNormalization(momentum=0.8)(L.Conv2D(WIDTHS[0], 3, padding="same")(inputs)))
    cin = WIDTHS[0]
    for width in WIDTHS:
        stride = 1 if width == cin else 2
        y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        y = L.ReLU()(L.BatchNormalization(momentum=0.8)(y))
        y = L.BatchNormalization(momentum=0.8)(L.Conv2D(width, 3, padding="same", use_bias=False)(y))
        shortcut = x if stride == 1 else L.Conv2D(width, 1, strides=stride, use_bias=False)(x)
        x = L.ReLU()(L.Add()([shortcut, y]))
        cin = width
    outputs = L.Dense(CLASSES)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(rng.standard_normal((16 * steps, *IMAGE)).astype(np.float32), rng.integers(0, CLASSES, 16 * steps),
              batch_size=16, epochs=1, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(os.path.join(directory, "ckpt"))
    return prefix, model


def nnx_resnet():
    """The NNX model, as a Flax user writes it (Keras's BatchNorm epsilon, 1e-3, set explicitly)."""
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
            stride = 1 if cin == cout else 2
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
            self.norm1 = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
            self.norm2 = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.shortcut = None if stride == 1 else nnx.Conv(cin, cout, (1, 1), strides=2, use_bias=False,
                                                               rngs=rngs)

        def __call__(self, x):
            y = self.norm2(self.conv2(nnx.relu(self.norm1(self.conv1(x)))))
            return nnx.relu((x if self.shortcut is None else self.shortcut(x)) + y)

    class ResNet(nnx.Module):
        def __init__(self, *, rngs: nnx.Rngs):
            self.stem = nnx.Conv(3, WIDTHS[0], (3, 3), rngs=rngs)
            self.stem_norm = nnx.BatchNorm(WIDTHS[0], epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.blocks = nnx.List([Block(a, b, rngs=rngs) for a, b in zip((WIDTHS[0], *WIDTHS[:-1]), WIDTHS)])
            self.classifier = nnx.Linear(WIDTHS[-1], CLASSES, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem_norm(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            return self.classifier(x.mean(axis=(1, 2)))

    return ResNet(rngs=nnx.Rngs(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    import tf2flax

    with tempfile.TemporaryDirectory() as tmp:
        prefix, keras_model = keras_resnet(args.steps, tmp)
        model = nnx_resnet()
        # The model itself, not nnx.state(model): its attribute order (stem, stem_norm, blocks, ...) is
        # evidence that nnx.state, sorted by name, loses; it tells the three 8-channel BatchNorms apart.
        auto = tf2flax.suggest_mapping(prefix, model)      # every decision, with its evidence
        print(auto.summary())
        tf2flax.init_params(prefix, "auto", model, progress=False)     # updates the model in place
        x = np.random.default_rng(1).standard_normal((4, *IMAGE)).astype(np.float32)
        diff = float(np.abs(np.asarray(model(x)) - np.asarray(keras_model(x, training=False))).max())
    print(f"max |flax - keras| = {diff:.2e}")
    return 0 if diff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())

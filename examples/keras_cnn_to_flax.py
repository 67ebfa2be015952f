"""A Keras 3 CNN, trained and saved as a TF2 checkpoint, loaded into Flax linen and Flax NNX.

What it shows:

- Keras layer weights map onto Flax modules *by name* with ``preset="keras"``: ``gamma``/``beta`` become
  ``scale``/``bias``, ``moving_mean``/``moving_variance`` become ``mean``/``var`` (in linen's
  ``batch_stats`` collection), Conv/Dense kernels already have Flax's layout.
- The one tensor that needs a real transform: Keras ``DepthwiseConv2D`` stores its kernel as
  ``(kh, kw, in, multiplier)``; Flax expresses a depthwise convolution as
  ``Conv(features=in * multiplier, feature_group_count=in)`` whose kernel is ``(kh, kw, 1, in * multiplier)``.
  Output channel ``c * multiplier + m`` comes from input channel ``c`` in both, so the transform is a
  plain reshape.
- The optimizer's slots and ``save_counter`` in the checkpoint are skipped, not reported as unused.

Run it (needs TensorFlow and Keras to *write* the checkpoint; tf2flax itself reads it without them)::

    python examples/keras_cnn_to_flax.py [--steps 4] [--keep-checkpoint DIR]

It prints the load report and ``max |flax - keras|`` for each Flax flavour, and exits non-zero if
either is above ``--tol``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

IMAGE = (16, 16, 3)
CLASSES = 10
KERAS_BN_EPSILON = 1e-3  # Keras's default; Flax's is 1e-5, so the Flax models must set it


# ------------------------------------------------------------------------------------------------
# The Keras model and its checkpoint
# ------------------------------------------------------------------------------------------------
def train_keras_cnn(directory: str, steps: int, seed: int = 0):
    """Build and train the Keras CNN a few steps; save model + optimizer with ``tf.train.Checkpoint``.

    Returns ``(checkpoint prefix, keras model)``.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    L = keras.layers
    # momentum=0.8 (Keras default: 0.99) so that a few steps move the moving statistics visibly.
    inputs = keras.Input(IMAGE)
    x = L.Conv2D(16, 3, strides=2, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(momentum=0.8, name="stem_bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.BatchNormalization(momentum=0.8, name="dw_bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(24, 1, name="pw")(x)
    x = L.BatchNormalization(momentum=0.8, name="pw_bn")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(CLASSES, name="head")(x)
    model = keras.Model(inputs, outputs, name="cnn")

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((16 * steps, *IMAGE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 16 * steps)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)

    # A TF2 object-based checkpoint, optimizer included (as training jobs write them).
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(os.path.join(directory, "ckpt"))
    return prefix, model


# ------------------------------------------------------------------------------------------------
# The same network in Flax linen and in Flax NNX (module names = Keras layer names)
# ------------------------------------------------------------------------------------------------
def make_linen_cnn():
    import flax.linen as nn
    import jax.numpy as jnp

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            def bn(name):
                return nn.BatchNorm(use_running_average=not train, epsilon=KERAS_BN_EPSILON, name=name)

            x = nn.relu(bn("stem_bn")(nn.Conv(16, (3, 3), strides=2, padding="SAME", name="stem")(x)))
            c = x.shape[-1]
            # Depthwise conv: one group per input channel, 2 output channels per group.
            x = nn.Conv(c * 2, (3, 3), padding="SAME", feature_group_count=c, name="dw")(x)
            x = nn.relu(bn("dw_bn")(x))
            x = nn.relu(bn("pw_bn")(nn.Conv(24, (1, 1), name="pw")(x)))
            x = jnp.mean(x, axis=(1, 2))
            return nn.Dense(CLASSES, name="head")(x)

    return CNN()


def make_nnx_cnn():
    import jax.numpy as jnp
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            c = 16

            def bn(n):
                return nnx.BatchNorm(n, epsilon=KERAS_BN_EPSILON, use_running_average=True, rngs=rngs)

            self.stem = nnx.Conv(IMAGE[-1], c, (3, 3), strides=2, padding="SAME", rngs=rngs)
            self.stem_bn = bn(c)
            self.dw = nnx.Conv(c, c * 2, (3, 3), padding="SAME", feature_group_count=c, rngs=rngs)
            self.dw_bn = bn(c * 2)
            self.pw = nnx.Conv(c * 2, 24, (1, 1), rngs=rngs)
            self.pw_bn = bn(24)
            self.head = nnx.Linear(24, CLASSES, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem_bn(self.stem(x)))
            x = nnx.relu(self.dw_bn(self.dw(x)))
            x = nnx.relu(self.pw_bn(self.pw(x)))
            return self.head(jnp.mean(x, axis=(1, 2)))

    return CNN(nnx.Rngs(0))


def depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras ``DepthwiseConv2D`` kernel ``(kh, kw, in, mult)`` -> Flax grouped ``Conv`` ``(kh, kw, 1, in*mult)``."""
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, 1, cin * mult)


def print_report(report) -> None:
    """What was loaded from where, then the summary (counts, unused, unset, skipped)."""
    for target, source in report.matched.items():
        print(f"  {target} <- {source}")
    print(report.summary())


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps before saving (batch 16)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max allowed |flax - keras|")
    parser.add_argument("--keep-checkpoint", metavar="DIR", help="write the checkpoint here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep_checkpoint or tmp
        prefix, keras_model = train_keras_cnn(directory, args.steps)
        x = np.random.default_rng(1).standard_normal((4, *IMAGE)).astype(np.float32)
        expected = np.asarray(keras_model(x, training=False))
        var = np.asarray(keras_model.get_layer("stem_bn").moving_variance)
        print(f"trained {args.steps} steps; stem_bn moving_variance in [{var.min():.3f}, {var.max():.3f}] (init: 1)")

        import jax
        import tf2flax

        # Keras's DepthwiseConv2D kernel needs reshaping; everything else matches by name.
        transforms = {r"(params/)?dw/kernel": depthwise_kernel}

        # --- Flax linen: the target is the variables dict, {'params': ..., 'batch_stats': ...}.
        linen_model = make_linen_cnn()
        abstract = jax.eval_shape(linen_model.init, jax.random.key(0), x)  # shapes only, nothing allocated
        # mapping=None: every target whose path is a (renamed) checkpoint name loads it;
        # strict=True: fail if any model tensor in the checkpoint, or any Flax leaf, is left over.
        variables, result = tf2flax.init_params(prefix, None, abstract, preset="keras", transforms=transforms,
                                                strict=True, return_report=True)
        print("== Flax linen ==")
        print_report(result.report)
        diff_linen = float(np.max(np.abs(np.asarray(linen_model.apply(variables, x)) - expected)))
        print(f"max |flax - keras| = {diff_linen:.3g}  (linen)")

        # --- Flax NNX: the target is the module itself; it is updated in place.
        nnx_model = make_nnx_cnn()
        nnx_model, result = tf2flax.init_params(prefix, None, nnx_model, preset="keras", transforms=transforms,
                                                strict=True, return_report=True)
        print("== Flax NNX ==")
        print_report(result.report)
        diff_nnx = float(np.max(np.abs(np.asarray(nnx_model(x)) - expected)))
        print(f"max |flax - keras| = {diff_nnx:.3g}  (nnx)")

    worst = max(diff_linen, diff_nnx)
    if worst > args.tol:
        print(f"FAILED: {worst:.3g} > tolerance {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: outputs match Keras within {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

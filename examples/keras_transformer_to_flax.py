"""A small Keras 3 transformer LM, trained and saved as a TF2 checkpoint, loaded into Flax linen.

Keras layers -> Flax linen modules:

=====================================  ================================================
Keras                                  Flax linen
=====================================  ================================================
``Embedding`` (``embeddings``)          ``nn.Embed`` (``embedding``)
learned positions (``embeddings``)     ``nn.Embed`` over ``arange(seq_len)``
``MultiHeadAttention``                 ``nn.MultiHeadDotProductAttention``
  ``query|key|value/kernel`` (d, h, k)   ``query|key|value/kernel`` (d, h, k): same layout
  ``attention_output/kernel`` (h, k, d)  ``out/kernel`` (h, k, d): same layout
``LayerNormalization`` (gamma, beta)   ``nn.LayerNorm`` (scale, bias), ``epsilon=1e-3``
``Dense``                              ``nn.Dense``
=====================================  ================================================

The ``keras`` preset does every rename in that table; one user rule maps Keras's flat layer names
(``block0_mha``, ``block1_ln2``, ...) onto linen's nested ones (``blocks_0/mha``, ``blocks_1/ln2``: a
list of submodules in ``setup`` is named ``blocks_0, blocks_1, ...``).

Run it (needs TensorFlow and Keras to *write* the checkpoint; tf2flax reads it without them)::

    python examples/keras_transformer_to_flax.py [--steps 4] [--keep-checkpoint DIR]

Prints the load report and ``max |flax - keras|``; exits non-zero above ``--tol``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

VOCAB, SEQ, DIM, HEADS, FFN, LAYERS = 64, 16, 32, 4, 64, 2
KERAS_LN_EPSILON = 1e-3  # Keras's default; Flax's LayerNorm default is 1e-6


# ------------------------------------------------------------------------------------------------
# The Keras model and its checkpoint
# ------------------------------------------------------------------------------------------------
def make_keras_transformer():
    import keras

    L = keras.layers

    class PositionEmbedding(L.Layer):
        """Adds a learned position embedding (its weight is called ``embeddings``, as Keras names them)."""

        def __init__(self, length, dim, **kwargs):
            super().__init__(**kwargs)
            self.length, self.dim = length, dim

        def build(self, input_shape):
            self.embeddings = self.add_weight(shape=(self.length, self.dim), name="embeddings",
                                              initializer="random_normal")

        def call(self, x):
            return x + self.embeddings[None, : x.shape[1]]

    # Post-norm blocks from stock layers named block<i>_<part>. (Why not a custom TransformerBlock layer?
    # Keras 3 gives the variables of sub-layers created inside a custom layer TensorFlow names with the
    # outer layer's name only, e.g. 'block_0/kernel' for every kernel of the block; in the checkpoint they
    # are then addressable only by object path, e.g. 'model/_operations/3/mha/_query_dense/_kernel'.)
    ids = keras.Input((SEQ,), dtype="int32")
    x = L.Embedding(VOCAB, DIM, name="embed")(ids)
    x = PositionEmbedding(SEQ, DIM, name="pos")(x)
    for i in range(LAYERS):
        attn = L.MultiHeadAttention(HEADS, key_dim=DIM // HEADS, name=f"block{i}_mha")(x, x, use_causal_mask=True)
        x = L.LayerNormalization(name=f"block{i}_ln1")(x + attn)
        h = L.Dense(FFN, activation="gelu", name=f"block{i}_ffn_in")(x)
        x = L.LayerNormalization(name=f"block{i}_ln2")(x + L.Dense(DIM, name=f"block{i}_ffn_out")(h))
    logits = L.Dense(VOCAB, name="lm_head")(x)
    return keras.Model(ids, logits, name="transformer_lm")


def train_keras_transformer(directory: str, steps: int, seed: int = 0):
    """Train the Keras LM a few steps on next-token prediction; save it with its optimizer."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = make_keras_transformer()
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (8 * steps, SEQ + 1))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=8, epochs=1, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(os.path.join(directory, "ckpt"))
    return prefix, model


# ------------------------------------------------------------------------------------------------
# The same network in Flax linen
# ------------------------------------------------------------------------------------------------
def make_linen_transformer():
    import flax.linen as nn
    import jax.numpy as jnp

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            attn = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=DIM, out_features=DIM, name="mha")
            x = nn.LayerNorm(epsilon=KERAS_LN_EPSILON, name="ln1")(x + attn(x, x, mask=mask, deterministic=True))
            h = nn.gelu(nn.Dense(FFN, name="ffn_in")(x), approximate=False)  # Keras "gelu" is the exact one
            return nn.LayerNorm(epsilon=KERAS_LN_EPSILON, name="ln2")(x + nn.Dense(DIM, name="ffn_out")(h))

    class TransformerLM(nn.Module):
        def setup(self):
            self.embed = nn.Embed(VOCAB, DIM)
            self.pos = nn.Embed(SEQ, DIM)
            self.blocks = [Block() for _ in range(LAYERS)]  # linen names these blocks_0, blocks_1, ...
            self.lm_head = nn.Dense(VOCAB)

        def __call__(self, ids):
            x = self.embed(ids) + self.pos(jnp.arange(ids.shape[1]))[None]
            mask = nn.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.lm_head(x)

    return TransformerLM()


def print_report(report) -> None:
    """What was loaded from where, then the summary (counts, unused, unset, skipped)."""
    for target, source in report.matched.items():
        print(f"  {target} <- {source}")
    print(report.summary())


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps before saving (batch 8)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max allowed |flax - keras|")
    parser.add_argument("--keep-checkpoint", metavar="DIR", help="write the checkpoint here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        prefix, keras_model = train_keras_transformer(args.keep_checkpoint or tmp, args.steps)
        ids = np.random.default_rng(1).integers(0, VOCAB, (3, SEQ)).astype(np.int32)
        expected = np.asarray(keras_model(ids, training=False))

        import jax
        import tf2flax

        model = make_linen_transformer()
        abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
        # preset="keras": embeddings->embedding, gamma/beta->scale/bias, attention_output->out.
        # rules: Keras's block<i>_<layer> is linen's blocks_<i>/<layer>. Rules rewrite checkpoint names
        # (after the preset), e.g. block1_mha/attention_output/kernel -> blocks_1/mha/out/kernel.
        variables, result = tf2flax.init_params(
            prefix, None, abstract, preset="keras", rules=[(r"^block(\d+)_", r"blocks_\1/")],
            strict=True, return_report=True)
        print_report(result.report)
        got = np.asarray(model.apply(variables, ids))

    diff = float(np.max(np.abs(got - expected)))
    print(f"max |flax - keras| = {diff:.3g}  (logits, max |logit| = {np.max(np.abs(expected)):.3g})")
    if diff > args.tol:
        print(f"FAILED: {diff:.3g} > tolerance {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: outputs match Keras within {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

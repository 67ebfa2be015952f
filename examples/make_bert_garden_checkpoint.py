"""Write ``examples/bert_tiny_garden/``: the tiny BERT of ``bert_tiny/`` in the TF2 Model Garden layout.

TensorFlow Model Garden's ``BertEncoder`` (a functional Keras model) saved as ``encoder`` of a
``tf.train.Checkpoint`` gives object paths ``encoder/layer_with_weights-K/...``: K = 0, 1, 2 the word,
position and type embeddings (``.../embeddings``), 3 the embedding LayerNorm (``gamma``, ``beta``),
4 .. L+3 the ``TransformerEncoderBlock`` s and L+4 the pooler (``kernel``, ``bias``). Inside a block:
``_attention_layer/_{query,key,value}_dense/{kernel,bias}`` (EinsumDense: kernels ``[H, heads, head_dim]``,
biases ``[heads, head_dim]``), ``_attention_layer/_output_dense`` (kernel ``[heads, head_dim, H]``),
``_attention_layer_norm``, ``_intermediate_dense``, ``_output_dense``, ``_output_layer_norm``.

This script builds that object graph with ``tf.Module`` s holding those exact attribute names (no
tf-models-official needed), fills it with ``bert_tiny``'s weights (the 2-D attention kernels reshaped
to EinsumDense's 3-D ones, as Model Garden's own TF1 converter does), writes it with
``tf.train.Checkpoint(encoder=...).write`` and records the outputs TensorFlow computes with the
Model Garden formulation (einsum attention) for ``bert_tiny``'s reference inputs. The weights are
``bert_tiny``'s exactly (reshaped, not recomputed); the reference outputs are TensorFlow's, bit for bit
only on the same machine and TensorFlow build. It writes to the directory you name::

    python examples/make_bert_garden_checkpoint.py --out /tmp/bert_tiny_garden
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE / "bert_tiny"


def garden_encoder(tf, weights: dict[str, np.ndarray], cfg: dict):
    """The Model Garden ``BertEncoder`` object graph (``layer_with_weights-K`` children) for TF1 ``weights``."""
    H, heads, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = H // heads

    def module(**variables):
        m = tf.Module()
        for attr, (name, value) in variables.items():
            setattr(m, attr, tf.Variable(value, name=name))
        return m

    def dense(scope: str, name: str, kernel_shape=None, bias_shape=None):
        k, b = weights[scope + "/kernel"], weights[scope + "/bias"]
        return module(kernel=(name + "/kernel", k.reshape(kernel_shape or k.shape)),
                      bias=(name + "/bias", b.reshape(bias_shape or b.shape)))

    def norm(scope: str, name: str):
        return module(gamma=(name + "/gamma", weights[scope + "/gamma"]), beta=(name + "/beta", weights[scope + "/beta"]))

    encoder = tf.Module()
    e = "bert/embeddings/"
    children = [
        module(embeddings=("word_embeddings/embeddings", weights[e + "word_embeddings"])),
        module(embeddings=("position_embedding/embeddings", weights[e + "position_embeddings"])),
        module(embeddings=("type_embeddings/embeddings", weights[e + "token_type_embeddings"])),
        norm(e + "LayerNorm", "embeddings/layer_norm"),
    ]
    for i in range(L):
        p, n = f"bert/encoder/layer_{i}/", f"transformer/layer_{i}/"
        block = tf.Module()
        block._attention_layer = tf.Module()
        for part in ("query", "key", "value"):
            setattr(block._attention_layer, f"_{part}_dense",
                    dense(p + "attention/self/" + part, n + "self_attention/" + part, (H, heads, d), (heads, d)))
        block._attention_layer._output_dense = dense(p + "attention/output/dense", n + "self_attention/attention_output",
                                                     (heads, d, H))
        block._attention_layer_norm = norm(p + "attention/output/LayerNorm", n + "self_attention_layer_norm")
        block._intermediate_dense = dense(p + "intermediate/dense", n + "intermediate")
        block._output_dense = dense(p + "output/dense", n + "output")
        block._output_layer_norm = norm(p + "output/LayerNorm", n + "output_layer_norm")
        children.append(block)
    children.append(dense("bert/pooler/dense", "pooler_transform"))
    for k, child in enumerate(children):
        setattr(encoder, f"layer_with_weights-{k}", child)
    return encoder


def garden_outputs(tf, encoder, cfg: dict, input_ids, token_type_ids, input_mask):
    """``(sequence_output, pooled_output)`` with Model Garden's einsum formulation (float32, TensorFlow)."""
    H, heads, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = H // heads
    layer = [getattr(encoder, f"layer_with_weights-{k}") for k in range(L + 5)]

    def layer_norm(x, m):
        mean, var = tf.nn.moments(x, [-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-12) * m.gamma + m.beta

    def gelu(x):
        return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))

    S = input_ids.shape[1]
    x = (tf.gather(layer[0].embeddings, input_ids) + layer[1].embeddings[None, :S]
         + tf.gather(layer[2].embeddings, token_type_ids))
    x = layer_norm(x, layer[3])
    adder = (1.0 - tf.cast(input_mask[:, None, None, :], tf.float32)) * -10000.0
    for block in layer[4:4 + L]:
        a = block._attention_layer
        q, k, v = (tf.einsum("bsh,hnd->bsnd", x, m.kernel) + m.bias for m in (a._query_dense, a._key_dense, a._value_dense))
        scores = tf.einsum("btnd,bsnd->bnst", k, q) / math.sqrt(d) + adder
        context = tf.einsum("bnst,btnd->bsnd", tf.nn.softmax(scores), v)
        x = layer_norm(x + tf.einsum("bsnd,ndh->bsh", context, a._output_dense.kernel) + a._output_dense.bias,
                       block._attention_layer_norm)
        h = gelu(tf.einsum("bsh,hi->bsi", x, block._intermediate_dense.kernel) + block._intermediate_dense.bias)
        x = layer_norm(x + tf.einsum("bsi,ih->bsh", h, block._output_dense.kernel) + block._output_dense.bias,
                       block._output_layer_norm)
    pooler = layer[L + 4]
    return x, tf.tanh(x[:, 0] @ pooler.kernel + pooler.bias)


def write(source: Path, out: Path) -> str:
    """Write the Model Garden checkpoint of ``source`` (a ``bert_tiny``-like directory) into ``out``."""
    import tensorflow as tf

    cfg = json.loads((source / "bert_config.json").read_text())
    reader = tf.train.load_checkpoint(str(source))
    weights = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    encoder = garden_encoder(tf, weights, cfg)
    ref = dict(np.load(source / "reference_outputs.npz"))
    inputs = {k: ref[k] for k in ("input_ids", "token_type_ids", "input_mask")}
    sequence_output, pooled_output = garden_outputs(tf, encoder, cfg, **inputs)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty: name a new directory")
    out.mkdir(parents=True, exist_ok=True)
    prefix = tf.train.Checkpoint(encoder=encoder).write(str(out / "bert_model.ckpt"))
    shutil.copy(source / "bert_config.json", out / "bert_config.json")
    np.savez(out / "reference_outputs.npz", **inputs, sequence_output=sequence_output.numpy(),
             pooled_output=pooled_output.numpy())
    return prefix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a TF1 BERT checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    args = parser.parse_args(argv)
    prefix = write(args.source, args.out)
    print(f"wrote {prefix} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

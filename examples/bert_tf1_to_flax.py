"""A TF1 BERT checkpoint (original google-research/bert names) into a Flax NNX BERT encoder.

No TensorFlow needed: the checkpoint is read by tf2flax. The default checkpoint is the shipped
``examples/bert_tiny/`` (written by ``make_bert_checkpoint.py``); any BERT checkpoint directory with a
``bert_config.json`` works (``--checkpoint DIR``).

The worked mapping (checkpoint name -> NNX state path):

==================================================================  ==========================================
``bert/embeddings/word_embeddings``                                 ``embeddings/word/embedding`` (sharded)
``bert/embeddings/LayerNorm/gamma``                                 ``embeddings/norm/scale``
``bert/encoder/layer_N/attention/self/query/kernel`` [H, H]         ``encoder/layers/N/attention/query/kernel``
                                                                    [H, heads, H/heads] (reshape)
``bert/encoder/layer_N/attention/output/dense/kernel`` [H, H]       ``encoder/layers/N/attention/out/kernel``
                                                                    [heads, H/heads, H] (reshape)
``bert/encoder/layer_N/attention/output/LayerNorm/beta``            ``encoder/layers/N/attention_norm/bias``
``bert/encoder/layer_N/intermediate/dense/kernel``                  ``encoder/layers/N/intermediate/kernel``
``bert/encoder/layer_N/output/dense/kernel``                        ``encoder/layers/N/output/kernel``
``bert/pooler/dense/kernel``                                        ``pooler/kernel``
``.../adam_m``, ``.../adam_v``, ``global_step``                     skipped (dropped by a rule)
``cls/...`` (pre-training heads)                                    not mapped: reported as unused
==================================================================  ==========================================

The word embedding table was saved partitioned (``fixed_size_partitioner(2)``); it is loaded into an
embedding sharded by rows over all devices, each device reading only its rows. To see it on 8 CPU
devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/bert_tf1_to_flax.py

The reference output is BERT computed in numpy (float64) straight from the checkpoint's arrays; the
outputs TensorFlow computed when it wrote the checkpoint (``reference_outputs.npz``) are compared too.
Prints the report and ``max |flax - reference|``; exits non-zero above ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

import tf2flax

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "bert_tiny"
LN_EPSILON = 1e-12  # BERT's LayerNorm (tf.contrib.layers.layer_norm) epsilon


# ------------------------------------------------------------------------------------------------
# BERT in Flax NNX
# ------------------------------------------------------------------------------------------------
class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        H = cfg["hidden_size"]
        self.word = nnx.Embed(cfg["vocab_size"], H, rngs=rngs)
        self.position = nnx.Embed(cfg["max_position_embeddings"], H, rngs=rngs)
        self.token_type = nnx.Embed(cfg["type_vocab_size"], H, rngs=rngs)
        self.norm = nnx.LayerNorm(H, epsilon=LN_EPSILON, rngs=rngs)

    def __call__(self, input_ids, token_type_ids):
        positions = jnp.arange(input_ids.shape[1])[None]
        return self.norm(self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions))


class BertLayer(nnx.Module):
    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        self.attention = nnx.MultiHeadAttention(cfg["num_attention_heads"], H, decode=False, keep_rngs=False,
                                                rngs=rngs)
        self.attention_norm = nnx.LayerNorm(H, epsilon=LN_EPSILON, rngs=rngs)
        self.intermediate = nnx.Linear(H, I, rngs=rngs)
        self.output = nnx.Linear(I, H, rngs=rngs)
        self.output_norm = nnx.LayerNorm(H, epsilon=LN_EPSILON, rngs=rngs)

    def __call__(self, x, mask):
        x = self.attention_norm(x + self.attention(x, mask=mask, deterministic=True))
        h = nnx.gelu(self.intermediate(x), approximate=True)  # BERT's gelu is the tanh approximation
        return self.output_norm(x + self.output(h))


class BertEncoder(nnx.Module):
    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg["num_hidden_layers"])])

    def __call__(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class BertModel(nnx.Module):
    """Returns ``(sequence_output [B, S, H], pooled_output [B, H])`` like BERT's ``BertModel``."""

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = BertEncoder(cfg, rngs=rngs)
        self.pooler = nnx.Linear(cfg["hidden_size"], cfg["hidden_size"], rngs=rngs)

    def __call__(self, input_ids, token_type_ids, input_mask):
        mask = input_mask[:, None, None, :] > 0  # [B, 1 (heads), 1 (queries), S (keys)]
        x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        return x, jnp.tanh(self.pooler(x[:, 0]))


# ------------------------------------------------------------------------------------------------
# The mapping: TF1 BERT names -> the NNX state paths above
# ------------------------------------------------------------------------------------------------
# Assignment map (TensorFlow's init_from_checkpoint syntax): checkpoint scope -> target scope.
MAPPING = {
    "bert/embeddings/": "embeddings/",
    "bert/encoder/": "encoder/",
    "bert/pooler/": "pooler/",
}

# Rules rewrite checkpoint names before the map is applied: the first matching rule wins (and None
# drops the name). They run after the keras preset, which already turned gamma/beta into scale/bias.
RULES = [
    (r"/adam_[mv]$", None),  # AdamWeightDecayOptimizer slots
    (r"^global_step$", None),
    (r"/(word|position|token_type)_embeddings$", r"/\1/embedding"),
    (r"/embeddings/LayerNorm/", "/embeddings/norm/"),
    (r"/layer_(\d+)/attention/self/", r"/layers/\1/attention/"),
    (r"/layer_(\d+)/attention/output/dense/", r"/layers/\1/attention/out/"),
    (r"/layer_(\d+)/attention/output/LayerNorm/", r"/layers/\1/attention_norm/"),
    (r"/layer_(\d+)/intermediate/dense/", r"/layers/\1/intermediate/"),
    (r"/layer_(\d+)/output/dense/", r"/layers/\1/output/"),
    (r"/layer_(\d+)/output/LayerNorm/", r"/layers/\1/output_norm/"),
    (r"/pooler/dense/", "/pooler/"),
]


def attention_transforms(cfg: dict) -> dict:
    """BERT's attention projections are [H, H] Dense kernels; NNX's are per head.

    Column ``h * head_dim + d`` of BERT's query kernel is head ``h``, feature ``d`` (its
    ``transpose_for_scores`` reshapes to [B, S, heads, head_dim]), so a row-major reshape is exact.
    """
    H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    qkv = r"encoder/layers/\d+/attention/(query|key|value)"
    return {
        qkv + "/kernel": ("reshape", (H, heads, H // heads)),
        qkv + "/bias": ("reshape", (heads, H // heads)),
        r"encoder/layers/\d+/attention/out/kernel": ("reshape", (heads, H // heads, H)),
    }


# ------------------------------------------------------------------------------------------------
# The reference: BERT in numpy, straight from the checkpoint's arrays (original names)
# ------------------------------------------------------------------------------------------------
def reference_bert(ckpt: tf2flax.Checkpoint, cfg: dict, input_ids, token_type_ids, input_mask):
    """``(sequence_output, pooled_output)`` as google-research/bert's modeling.py computes them (float64)."""

    def w(name):
        return ckpt.read(name).astype(np.float64)

    def dense(x, scope):
        return x @ w(scope + "/kernel") + w(scope + "/bias")

    def layer_norm(x, scope):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + LN_EPSILON) * w(scope + "/gamma") + w(scope + "/beta")

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    B, S = input_ids.shape
    H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = H // heads
    e = "bert/embeddings/"
    x = w(e + "word_embeddings")[input_ids] + w(e + "token_type_embeddings")[token_type_ids]
    x = layer_norm(x + w(e + "position_embeddings")[:S], e + "LayerNorm")
    adder = (1.0 - input_mask[:, None, None, :]) * -10000.0
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        q, k, v = (dense(x, p + "attention/self/" + n).reshape(B, S, heads, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + adder
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = layer_norm(dense(context, p + "attention/output/dense") + x, p + "attention/output/LayerNorm")
        x = layer_norm(dense(gelu(dense(x, p + "intermediate/dense")), p + "output/dense") + x,
                       p + "output/LayerNorm")
    return x, np.tanh(dense(x[:, 0], "bert/pooler/dense"))


def example_inputs(checkpoint_dir: Path, cfg: dict):
    """The inputs TensorFlow's outputs were recorded for, if shipped; else seeded ones (one padded)."""
    recorded = checkpoint_dir / "reference_outputs.npz"
    if recorded.exists():
        data = dict(np.load(recorded))
        return data["input_ids"], data["token_type_ids"], data["input_mask"], data
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg["vocab_size"], (2, 16)).astype(np.int32)
    types = (np.arange(16)[None] >= np.array([[6], [9]])).astype(np.int32)
    mask = (np.arange(16)[None] < np.array([[16], [11]])).astype(np.int32)
    return ids, types, mask, None


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="BERT checkpoint directory with bert_config.json (default: the shipped bert_tiny)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max allowed |flax - reference|")
    args = parser.parse_args(argv)

    cfg = json.loads((args.checkpoint / "bert_config.json").read_text())
    ckpt = tf2flax.open_checkpoint(args.checkpoint)  # a directory resolves to its latest checkpoint
    print(f"checkpoint: {ckpt.path}")

    # The model's shapes only (nothing allocated): tf2flax fills in every leaf it loads.
    model = nnx.eval_shape(lambda: BertModel(cfg, rngs=nnx.Rngs(0)))

    # Shard the word embedding table by rows over all devices; everything else is replicated.
    # (Auto axes: jit/XLA propagates the shardings through the model, as in any pjit-style program.)
    mesh = jax.make_mesh((jax.device_count(),), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    model, result = tf2flax.init_params(
        ckpt, MAPPING, model, preset="keras", rules=RULES, transforms=attention_transforms(cfg),
        mesh=mesh, sharding_rules=[(r"^embeddings/word/embedding$", P("model", None))], return_report=True)

    report = result.report
    for target, source in report.matched.items():
        print(f"  {target} <- {source}")
    print(report.summary())
    stats = result.stats
    print(f"read {stats.tensors} tensors, {stats.regions} regions, {stats.bytes_read} bytes")
    if report.unset:  # with an abstract model, an unset leaf would have no value at all
        print(f"FAILED: {len(report.unset)} parameters not loaded", file=sys.stderr)
        return 1

    table = model.embeddings.word.embedding.get_value()
    rows = sorted({s.index[0].start or 0 for s in table.addressable_shards})
    print(f"word embedding {table.shape} sharded over {len(table.sharding.device_set)} device(s), "
          f"{table.addressable_shards[0].data.shape[0]} rows each (first rows {rows})")

    input_ids, token_type_ids, input_mask, recorded = example_inputs(args.checkpoint, cfg)
    sequence_output, pooled_output = model(input_ids, token_type_ids, input_mask)
    ref_sequence, ref_pooled = reference_bert(ckpt, cfg, input_ids, token_type_ids, input_mask)
    diff = max(float(np.max(np.abs(np.asarray(sequence_output) - ref_sequence))),
               float(np.max(np.abs(np.asarray(pooled_output) - ref_pooled))))
    print(f"max |flax - reference| = {diff:.3g}  (sequence and pooled outputs; reference: numpy from the "
          f"checkpoint's arrays)")
    if recorded is not None:
        tf_diff = max(float(np.max(np.abs(np.asarray(sequence_output) - recorded["sequence_output"]))),
                      float(np.max(np.abs(np.asarray(pooled_output) - recorded["pooled_output"]))))
        print(f"max |flax - tensorflow| = {tf_diff:.3g}  (outputs TensorFlow recorded when writing the checkpoint)")
        diff = max(diff, tf_diff)
    if diff > args.tol:
        print(f"FAILED: {diff:.3g} > tolerance {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: outputs match within {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

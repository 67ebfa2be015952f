"""Write the example checkpoint ``examples/bert_tiny/``: a tiny BERT, trained 3 steps by TensorFlow 1-style code.

The graph follows google-research/bert (``modeling.py``, ``optimization.py``, ``run_pretraining.py``),
so the checkpoint has exactly the original names and layout:

- ``bert/embeddings/{word,token_type,position}_embeddings``, ``bert/embeddings/LayerNorm/{gamma,beta}``;
  the word embeddings are *partitioned* (``fixed_size_partitioner(2)``): the Saver stores them as one
  full-shape tensor made of two slices;
- ``bert/encoder/layer_N/attention/self/{query,key,value}/{kernel,bias}`` (kernels ``[hidden, hidden]``),
  ``.../attention/output/dense``, ``.../attention/output/LayerNorm``, ``.../intermediate/dense``,
  ``.../output/dense``, ``.../output/LayerNorm``;
- ``bert/pooler/dense/{kernel,bias}``;
- the pre-training heads ``cls/predictions/...`` (masked LM, tied to the word embeddings) and
  ``cls/seq_relationship/...`` (next sentence);
- ``AdamWeightDecayOptimizer`` slots ``<var>/adam_m``, ``<var>/adam_v`` (for the partitioned table:
  ``.../word_embeddings/part_0/adam_m`` etc., as BERT names them) and ``global_step``.

It also writes ``bert_config.json`` (BERT's config format) and ``reference_outputs.npz``: fixed inputs
and the sequence/pooled outputs TensorFlow computes for them with the saved weights.

Weights start from seeded numpy draws (larger than BERT's 0.02 initializer so that attention is far
from uniform and a wrong head split would show), then take 3 Adam steps on the pre-training loss.
What is reproducible: the names, shapes, dtypes and initial values (seeded numpy) always; the trained
values and the reference outputs bit for bit only on the same machine and TensorFlow build (two runs
here write the same bytes; ``tests/test_examples.py`` checks it). TensorFlow's CPU kernels round
differently on other CPUs and builds: a checkpoint written here differs from the shipped
``examples/bert_tiny/`` in 137 of its 141 tensors, by at most 1.1e-6. It writes to the directory you
name (``examples/bert_tiny/`` is not touched unless you name it)::

    python examples/make_bert_checkpoint.py --out /tmp/bert_tiny
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

CONFIG = {
    "attention_probs_dropout_prob": 0.0,  # no dropout: the 3 training steps are deterministic
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "type_vocab_size": 2,
    "vocab_size": 128,
}
STEPS = 3
WORD_EMBEDDING_PARTS = 2


def initial_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A seeded draw per variable name (independent of creation order and of TensorFlow's RNG)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "gamma":
        value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif leaf in ("beta", "bias", "output_bias"):
        value = 0.2 * rng.standard_normal(shape)
    elif "embeddings" in leaf:
        value = 0.5 * rng.standard_normal(shape)
    else:  # kernels: unit-variance outputs
        value = rng.standard_normal(shape) / math.sqrt(shape[0])
    return value.astype(np.float32)


def build_and_train(out: Path) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    tf.config.experimental.enable_op_determinism()
    cfg = CONFIG
    H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = H // heads

    def variable(name, shape, partitioner=None):
        full = v1.get_variable_scope().name + "/" + name
        value = initial_value(full, tuple(shape))

        def init(shape, dtype=None, partition_info=None):  # each partition gets its own rows
            offset = partition_info.var_offset if partition_info is not None else [0] * len(shape)
            return tf.constant(value[tuple(slice(o, o + int(d)) for o, d in zip(offset, shape))])

        return v1.get_variable(name, shape, tf.float32, initializer=init, partitioner=partitioner)

    def dense(x, units, name, activation=None):
        with v1.variable_scope(name):
            y = tf.matmul(x, variable("kernel", [int(x.shape[-1]), units])) + variable("bias", [units])
        return activation(y) if activation else y

    def layer_norm(x, name="LayerNorm"):  # tf.contrib.layers.layer_norm: epsilon 1e-12
        with v1.variable_scope(name):
            mean, var = tf.nn.moments(x, [-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(var + 1e-12) * variable("gamma", [x.shape[-1]]) + variable(
                "beta", [x.shape[-1]])

    def gelu(x):  # BERT's tanh approximation
        return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))

    def bert(input_ids, token_type_ids, input_mask):
        B, S = input_ids.shape
        with v1.variable_scope("bert"):
            with v1.variable_scope("embeddings"):
                word = variable("word_embeddings", [cfg["vocab_size"], H],
                                partitioner=v1.fixed_size_partitioner(WORD_EMBEDDING_PARTS))
                x = tf.nn.embedding_lookup(word, input_ids)
                token_type = variable("token_type_embeddings", [cfg["type_vocab_size"], H])
                x += tf.matmul(tf.one_hot(token_type_ids, cfg["type_vocab_size"]), token_type)
                x += variable("position_embeddings", [cfg["max_position_embeddings"], H])[None, :S]
                x = layer_norm(x)
            adder = (1.0 - tf.cast(input_mask[:, None, None, :], tf.float32)) * -10000.0
            with v1.variable_scope("encoder"):
                x = tf.reshape(x, [B * S, H])
                for i in range(cfg["num_hidden_layers"]):
                    with v1.variable_scope(f"layer_{i}"):
                        with v1.variable_scope("attention"):
                            with v1.variable_scope("self"):
                                q, k, v = (tf.transpose(tf.reshape(dense(x, H, n), [B, S, heads, head_dim]),
                                                        [0, 2, 1, 3]) for n in ("query", "key", "value"))
                                scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(head_dim) + adder
                                ctx = tf.matmul(tf.nn.softmax(scores), v)
                                ctx = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [B * S, H])
                            with v1.variable_scope("output"):
                                x = layer_norm(dense(ctx, H, "dense") + x)
                        with v1.variable_scope("intermediate"):
                            h = dense(x, cfg["intermediate_size"], "dense", gelu)
                        with v1.variable_scope("output"):
                            x = layer_norm(dense(h, H, "dense") + x)
                sequence_output = tf.reshape(x, [B, S, H])
            with v1.variable_scope("pooler"):
                pooled_output = dense(sequence_output[:, 0], H, "dense", tf.tanh)
        return sequence_output, pooled_output, word

    def pretraining_loss(sequence_output, pooled_output, word, mlm_targets, nsp_targets):
        with v1.variable_scope("cls/predictions"):
            with v1.variable_scope("transform"):
                h = layer_norm(dense(sequence_output, H, "dense", gelu))
            logits = tf.einsum("bsh,vh->bsv", h, tf.convert_to_tensor(word))
            logits += variable("output_bias", [cfg["vocab_size"]])
        mlm = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(mlm_targets, logits))
        with v1.variable_scope("cls/seq_relationship"):
            nsp_logits = tf.matmul(pooled_output, variable("output_weights", [2, H]), transpose_b=True)
            nsp_logits += variable("output_bias", [2])
        nsp = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(nsp_targets, nsp_logits))
        return mlm + nsp

    def adam_weight_decay(loss, global_step, lr=1e-3, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
        """optimization.py's AdamWeightDecayOptimizer (slots '<var>/adam_m', '<var>/adam_v')."""
        tvars = v1.trainable_variables()
        grads, _ = tf.clip_by_global_norm(v1.gradients(loss, tvars), 1.0)
        updates = []
        for grad, param in zip(grads, tvars):
            name = param.name[: -len(":0")]
            m = v1.get_variable(name + "/adam_m", param.shape, tf.float32, v1.zeros_initializer(), trainable=False)
            v = v1.get_variable(name + "/adam_v", param.shape, tf.float32, v1.zeros_initializer(), trainable=False)
            grad = tf.convert_to_tensor(grad)
            next_m = b1 * m + (1 - b1) * grad
            next_v = b2 * v + (1 - b2) * tf.square(grad)
            update = next_m / (tf.sqrt(next_v) + eps)
            if not any(s in name for s in ("LayerNorm", "layer_norm", "bias")):
                update += wd * param
            updates += [param.assign(param - lr * update), m.assign(next_m), v.assign(next_v)]
        return tf.group(*updates, global_step.assign(global_step + 1))

    rng = np.random.default_rng(0)
    B, S = 4, 16
    train = {
        "ids": rng.integers(0, cfg["vocab_size"], (B, S)).astype(np.int32),
        "types": (np.arange(S)[None] >= rng.integers(4, S, (B, 1))).astype(np.int32),
        "mask": (np.arange(S)[None] < rng.integers(8, S + 1, (B, 1))).astype(np.int32),
        "mlm": rng.integers(0, cfg["vocab_size"], (B, S)).astype(np.int32),
        "nsp": rng.integers(0, 2, (B,)).astype(np.int32),
    }
    # The reference inputs: the second sequence is padded (input_mask 0 on its last 5 positions).
    ref = {
        "input_ids": rng.integers(0, cfg["vocab_size"], (2, S)).astype(np.int32),
        "token_type_ids": np.array([[0] * 6 + [1] * 10, [0] * 9 + [1] * 7], np.int32),
        "input_mask": np.array([[1] * S, [1] * 11 + [0] * 5], np.int32),
    }

    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        global_step = v1.train.get_or_create_global_step()
        ph = {k: v1.placeholder(tf.int32, v.shape) for k, v in train.items()}
        seq, pooled, word = bert(ph["ids"], ph["types"], ph["mask"])
        train_op = adam_weight_decay(pretraining_loss(seq, pooled, word, ph["mlm"], ph["nsp"]), global_step)
        ref_ph = {k: v1.placeholder(tf.int32, v.shape) for k, v in ref.items()}
        with v1.variable_scope(v1.get_variable_scope(), reuse=True):
            ref_seq, ref_pooled, _ = bert(ref_ph["input_ids"], ref_ph["token_type_ids"], ref_ph["input_mask"])
        saver = v1.train.Saver(save_relative_paths=True)
        config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        with v1.Session(graph=graph, config=config) as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(STEPS):
                sess.run(train_op, {ph[k]: v for k, v in train.items()})
            sequence_output, pooled_output = sess.run(
                [ref_seq, ref_pooled], {ref_ph[k]: v for k, v in ref.items()})
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("model.ckpt-*"):
                old.unlink()
            prefix = saver.save(sess, str(out / "model.ckpt"), global_step=global_step, write_state=False,
                                write_meta_graph=False)

    name = Path(prefix).name
    # The state file, without the timestamps the Saver would write (so the output is reproducible).
    (out / "checkpoint").write_text(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
    (out / "bert_config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")
    np.savez(out / "reference_outputs.npz", **ref, sequence_output=sequence_output, pooled_output=pooled_output)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {prefix} ({size / 1024:.0f} KiB in {out})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (created; its model.ckpt-* files are replaced)")
    build_and_train(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()

"""Real TensorFlow checkpoints of model families (scanned layers, T5, BERT), for the stacking and preset
tests. Every file is written by TensorFlow itself, with the families' exact variable names.

Example::

    prefix = write_tf1_variables(tmp_path, {"layer_0/w": np.ones((2, 3), np.float32)})
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tf_writers import _graph_session_config, _slice_initializer, tf


def write_tf1_variables(directory: str | os.PathLike, values: dict[str, np.ndarray],
                        partitioned: dict[str, tuple[int, int]] | None = None, sharded: bool = True) -> str:
    """A TF1 graph-mode ``Saver`` checkpoint of ``values`` (name -> array); returns its prefix.

    ``partitioned[name] = (parts, axis)`` saves that variable with ``fixed_size_partitioner`` (one
    full-shape key with slices, as TF1 does). With ``sharded``, variables alternate between two CPU
    devices, so the checkpoint has two data files.
    """
    T = tf()
    v1 = T.compat.v1
    partitioned = partitioned or {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = T.Graph()
    with g.as_default():
        for i, (name, value) in enumerate(sorted(values.items())):
            with T.device(f"/cpu:{i % 2 if sharded else 0}"):
                if name in partitioned:
                    parts, axis = partitioned[name]
                    v1.get_variable(name, shape=value.shape, dtype=T.as_dtype(value.dtype),
                                    initializer=_slice_initializer(value),
                                    partitioner=v1.fixed_size_partitioner(parts, axis=axis))
                else:
                    v1.Variable(value, name=name, dtype=T.as_dtype(value.dtype), use_resource=False)
        saver = v1.train.Saver(sharded=sharded)
        with v1.Session(graph=g, config=_graph_session_config()) as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, str(directory / "model.ckpt"), global_step=0)


def seeded(shape: tuple[int, ...], seed: int, dtype: type = np.float32) -> np.ndarray:
    """Distinct, reproducible values of ``shape``."""
    return (np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def t5_values(version: str, layers: int = 2, d_model: int = 8, kv: int = 16, d_ff: int = 12, vocab: int = 20,
              heads: int = 2, buckets: int = 4) -> dict[str, np.ndarray]:
    """A Mesh-TensorFlow T5 checkpoint's tensors, named as Mesh-TF names them (bfloat16 parameters,
    float32 Adafactor slots, an int64 ``global_step``).

    ``version="1.0"``: T5.1.0 (``layer_norm``, ``DenseReluDense/wi``, logits tied to the embedding,
    one relative position bias per tower). ``"1.1"``: T5.1.1 (``rms_norm``, ``wi_0``/``wi_1``, separate
    ``decoder/logits``) with a relative position bias in every block.
    """
    import ml_dtypes

    t11 = version == "1.1"
    norm = "rms_norm" if t11 else "layer_norm"
    final = "rms_norm" if t11 else "final_layer_norm"
    values: dict[str, np.ndarray] = {"shared/embedding": (vocab, d_model)}
    for tower, attentions in (("encoder", ["SelfAttention"]), ("decoder", ["SelfAttention", "EncDecAttention"])):
        for b in range(layers):
            block = f"{tower}/block_{b:03d}"
            for sub, kind in enumerate(attentions):
                p = f"{block}/layer_{sub:03d}"
                values.update({f"{p}/{kind}/{m}": (d_model, kv) for m in "qkv"})
                values[f"{p}/{kind}/o"] = (kv, d_model)
                values[f"{p}/{norm}/scale"] = (d_model,)
            if b == 0 or t11:
                values[f"{block}/layer_000/SelfAttention/relative_attention_bias"] = (heads, buckets)
            p = f"{block}/layer_{len(attentions):03d}"
            for wi in (["wi_0", "wi_1"] if t11 else ["wi"]):
                values[f"{p}/DenseReluDense/{wi}/kernel"] = (d_model, d_ff)
            values[f"{p}/DenseReluDense/wo/kernel"] = (d_ff, d_model)
            values[f"{p}/{norm}/scale"] = (d_model,)
        values[f"{tower}/{final}/scale"] = (d_model,)
    if t11:
        values["decoder/logits/kernel"] = (d_model, vocab)
    out = {name: seeded(shape, i).astype(ml_dtypes.bfloat16) for i, (name, shape) in enumerate(sorted(values.items()))}
    out["encoder/block_000/layer_000/SelfAttention/q_slot_vr"] = seeded((d_model,), 100)
    out["encoder/block_000/layer_000/SelfAttention/q_slot_vc"] = seeded((kv,), 101)
    out[f"encoder/{final}/scale_slot_v"] = seeded((d_model,), 102)
    out["global_step"] = np.array(1000, np.int64)
    return out

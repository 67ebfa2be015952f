"""The shipped TF1 BERT (``examples/bert_tiny``) into an NNX BERT with ``mapping="auto"``: no map.

The NNX model is the one in ``bert_tf1_to_flax.py`` (``nnx.MultiHeadAttention``, ``nnx.List`` of
layers), plain and scanned (one layer created under ``nnx.vmap``, run with ``nnx.scan``: every leaf
has a leading layer axis). Prints the decisions and ``max |flax - TensorFlow|`` for both, and exits
non-zero above ``--tol``. No TensorFlow needed.

    python examples/bert_auto.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flax import nnx

import tf2flax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bert_tf1_to_flax import BertEmbeddings, BertLayer, BertModel  # noqa: E402


class ScannedEncoder(nnx.Module):
    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=cfg["num_hidden_layers"])
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return BertLayer(cfg, rngs=rngs)

        self.layers = make(rngs)

    def __call__(self, x, mask):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, layer):
            return layer(x, mask)

        return step(x, self.layers)


class ScannedBert(BertModel):
    def __init__(self, cfg: dict, *, rngs: nnx.Rngs):
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = ScannedEncoder(cfg, rngs=rngs)
        self.pooler = nnx.Linear(cfg["hidden_size"], cfg["hidden_size"], rngs=rngs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(HERE / "bert_tiny"))
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    cfg = json.loads((Path(args.checkpoint) / "bert_config.json").read_text())
    ref = np.load(Path(args.checkpoint) / "reference_outputs.npz")
    worst = 0.0
    for cls in (BertModel, ScannedBert):
        model = cls(cfg, rngs=nnx.Rngs(0))
        auto = tf2flax.suggest_mapping(args.checkpoint, nnx.state(model))   # review before loading
        print(auto.summary())
        state = tf2flax.init_params(args.checkpoint, "auto", nnx.state(model), progress=False)
        nnx.update(model, state)
        seq, pooled = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
        diff = max(float(np.abs(np.asarray(seq) - ref["sequence_output"]).max()),
                   float(np.abs(np.asarray(pooled) - ref["pooled_output"]).max()))
        print(f"{cls.__name__}: max |flax - TensorFlow| = {diff:.2e}")
        worst = max(worst, diff)
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())

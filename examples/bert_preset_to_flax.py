"""``preset="bert"``: a TF1 and a Model Garden BERT checkpoint into one Flax BERT, plain and scanned.

The Flax model below (linen) has exactly the parameter tree of transformers' ``FlaxBertModel``
(``embeddings/word_embeddings/embedding``, ``encoder/layer/0/attention/self/query/kernel``, ...), so
the same load works for that class's ``params``. Its scanned variant runs ``nn.scan`` over the layers:
``encoder/layer/attention/self/query/kernel`` is ``[L, H, H]``, filled from every layer's tensor.

For each checkpoint (``bert_tiny/``: google-research/bert TF1 names, written by ``make_bert_checkpoint.py``;
``bert_tiny_garden/``: the same weights in Model Garden's TF2 layout with 3-D EinsumDense kernels,
written by ``make_bert_garden_checkpoint.py``), it loads

1. the plain model (no mapping at all: ``preset="bert"`` names every tensor as the Flax tree does);
2. the scanned model on an 8-device mesh with the layer axis sharded;
3. the scanned model on an 8-device mesh with the hidden axis sharded;

and compares the outputs with the ones TensorFlow computed when it wrote the checkpoint::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/bert_preset_to_flax.py

Prints one ``max |flax - tensorflow|`` line per load and exits non-zero above ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

import tf2flax

HERE = Path(__file__).resolve().parent
# layout -> (directory with bert_config.json and TensorFlow's outputs, checkpoint)
CHECKPOINTS = {"tf1": (HERE / "bert_tiny", HERE / "bert_tiny"),
               "garden": (HERE / "bert_tiny_garden", HERE / "bert_tiny_garden" / "bert_model.ckpt")}
LN_EPSILON = 1e-12


# ------------------------------------------------------------------------------------------------
# BERT in Flax linen, with FlaxBertModel's module names
# ------------------------------------------------------------------------------------------------
class Embeddings(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        H = self.cfg["hidden_size"]
        positions = jnp.arange(input_ids.shape[1])[None]
        x = (nn.Embed(self.cfg["vocab_size"], H, name="word_embeddings")(input_ids)
             + nn.Embed(self.cfg["max_position_embeddings"], H, name="position_embeddings")(positions)
             + nn.Embed(self.cfg["type_vocab_size"], H, name="token_type_embeddings")(token_type_ids))
        return nn.LayerNorm(LN_EPSILON, name="LayerNorm")(x)


class SelfAttention(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x, mask):
        H, heads = self.cfg["hidden_size"], self.cfg["num_attention_heads"]
        q, k, v = (nn.Dense(H, name=n)(x).reshape(*x.shape[:2], heads, H // heads) for n in ("query", "key", "value"))
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -10000.0)
        context = nn.dot_product_attention(q, k, v, bias=bias)
        return context.reshape(x.shape)


class SelfOutput(nn.Module):
    @nn.compact
    def __call__(self, h, x):
        return nn.LayerNorm(LN_EPSILON, name="LayerNorm")(nn.Dense(x.shape[-1], name="dense")(h) + x)


class Attention(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x, mask):
        return SelfOutput(name="output")(SelfAttention(self.cfg, name="self")(x, mask), x)


class Intermediate(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x):
        return nn.gelu(nn.Dense(self.cfg["intermediate_size"], name="dense")(x), approximate=True)


class Layer(nn.Module):
    """One BERT layer; as the body of ``nn.scan`` (``scanned``) it returns ``(x, None)``."""

    cfg: dict
    scanned: bool = False

    @nn.compact
    def __call__(self, x, mask):
        x = Attention(self.cfg, name="attention")(x, mask)
        x = SelfOutput(name="output")(Intermediate(self.cfg, name="intermediate")(x), x)
        return (x, None) if self.scanned else x


class LayerCollection(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.cfg["num_hidden_layers"]):
            x = Layer(self.cfg, name=str(i))(x, mask)
        return x


class Encoder(nn.Module):
    cfg: dict
    scan: bool = False

    @nn.compact
    def __call__(self, x, mask):
        if not self.scan:
            return LayerCollection(self.cfg, name="layer")(x, mask)
        layers = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                         length=self.cfg["num_hidden_layers"])
        return layers(self.cfg, scanned=True, name="layer")(x, mask)[0]


class Pooler(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.cfg["hidden_size"], name="dense")(x[:, 0]))


class Bert(nn.Module):
    """``(sequence_output [B, S, H], pooled_output [B, H])`` as BERT's ``BertModel`` returns them."""

    cfg: dict
    scan: bool = False

    @nn.compact
    def __call__(self, input_ids, token_type_ids, input_mask):
        x = Embeddings(self.cfg, name="embeddings")(input_ids, token_type_ids)
        x = Encoder(self.cfg, self.scan, name="encoder")(x, input_mask)
        return x, Pooler(self.cfg, name="pooler")(x)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def layer_axis_sharded(mesh):
    """Stacked layer leaves split over the mesh's ``layers`` axis (each device holds its layers)."""
    def sharding(path, leaf):
        scanned = path.startswith("params/encoder/layer/") and not path.split("/")[3].isdigit()
        return NamedSharding(mesh, P("layers") if scanned else P())
    return sharding


def hidden_axis_sharded(mesh):
    """Every leaf's last (hidden/feature) axis split over the whole mesh where it divides; else replicated."""
    def sharding(path, leaf):
        if leaf.shape and leaf.shape[-1] % mesh.size == 0:
            return NamedSharding(mesh, P(*([None] * (len(leaf.shape) - 1)), ("layers", "model")))
        return NamedSharding(mesh, P())
    return sharding


def load(checkpoint: Path, cfg: dict, scan: bool, shardings=None):
    model = Bert(cfg, scan=scan)
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)
    variables, result = tf2flax.init_params(checkpoint, None, abstract, preset="bert", shardings=shardings,
                                            return_report=True)
    return model, variables, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tol", type=float, default=1e-5, help="max allowed |flax - tensorflow|")
    args = parser.parse_args(argv)
    if jax.device_count() % 2:
        print("needs an even number of devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8",
              file=sys.stderr)
        return 2
    mesh = jax.make_mesh((2, jax.device_count() // 2), ("layers", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    worst = 0.0
    for layout, (directory, checkpoint) in CHECKPOINTS.items():
        cfg = json.loads((directory / "bert_config.json").read_text())
        recorded = dict(np.load(directory / "reference_outputs.npz"))
        inputs = [recorded[k] for k in ("input_ids", "token_type_ids", "input_mask")]
        loads = (("plain", False, None), ("scanned, layer axis sharded", True, layer_axis_sharded(mesh)),
                 ("scanned, hidden axis sharded", True, hidden_axis_sharded(mesh)))
        for how, scan, shardings in loads:
            model, variables, result = load(checkpoint, cfg, scan, shardings)
            print(f"[{layout}, {how}] {result.report.summary().splitlines()[0]}; {result.stats.summary()}; "
                  f"{result.stats.full_reads} read whole")
            if result.report.unset:
                print(f"FAILED: {result.report.unset} not loaded", file=sys.stderr)
                return 1
            sequence_output, pooled_output = jax.jit(model.apply)(variables, *inputs)
            diff = max(float(np.max(np.abs(np.asarray(sequence_output) - recorded["sequence_output"]))),
                       float(np.max(np.abs(np.asarray(pooled_output) - recorded["pooled_output"]))))
            print(f"  max |flax - tensorflow| = {diff:.3g}")
            worst = max(worst, diff)
        query = variables["params"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"]
        print(f"  scanned query kernel {query.shape}, {query.sharding.spec} over {len(query.sharding.device_set)} devices")
    if worst > args.tol:
        print(f"FAILED: {worst:.3g} > tolerance {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: outputs match TensorFlow's within {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

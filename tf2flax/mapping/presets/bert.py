"""The ``bert`` preset: BERT checkpoints -> the parameter tree of transformers' ``FlaxBertModel``.

Two checkpoint layouts map to one Flax tree (every name also under ``params/`` for a linen
``variables`` dict):

=============================================================  ======================================================
google-research/bert (TF1)                                     Flax (``FlaxBertModel``)
=============================================================  ======================================================
``bert/embeddings/{word,position,token_type}_embeddings``      ``embeddings/{word,position,token_type}_embeddings/embedding``
``bert/embeddings/LayerNorm/{gamma,beta}``                     ``embeddings/LayerNorm/{scale,bias}``
``bert/encoder/layer_N/attention/self/{query,key,value}/...``  ``encoder/layer/N/attention/self/{query,key,value}/...``
``bert/encoder/layer_N/attention/output/dense/...``            ``encoder/layer/N/attention/output/dense/...``
``bert/encoder/layer_N/.../LayerNorm/{gamma,beta}``            ``encoder/layer/N/.../LayerNorm/{scale,bias}``
``bert/encoder/layer_N/{intermediate,output}/dense/...``       ``encoder/layer/N/{intermediate,output}/dense/...``
``bert/pooler/dense/...``                                      ``pooler/dense/...``
``cls/...`` (pre-training heads)                               ``cls/...`` (gamma/beta -> scale/bias)
=============================================================  ======================================================

The TF2 Model Garden layout (``BertEncoder``, saved as ``encoder`` of a ``tf.train.Checkpoint``):
``encoder/layer_with_weights-K/...`` with K = 0, 1, 2 the word, position and type embeddings,
3 the embedding LayerNorm, 4 .. L+3 the transformer blocks (``_attention_layer/_query_dense``,
``_key_dense``, ``_value_dense``, ``_output_dense`` (or ``_attention_output_dense``),
``_attention_layer_norm``, ``_intermediate_dense``, ``_output_dense``, ``_output_layer_norm``) and
L+4 the pooler; the same variables reached through the encoder's attributes
(``_embedding_layer``, ``_position_embedding_layer``, ``_type_embedding_layer``,
``_embedding_norm_layer``, ``_transformer_layers/N``, ``_pooler_layer``) map the same way. Its EinsumDense kernels are 3-D (query ``[H, heads, head_dim]``, output
``[heads, head_dim, H]``, biases ``[heads, head_dim]``): the preset reshapes them to the target's
``[H, H]``/``[H]`` (a split/merge of adjacent axes, read region by region).

Scanned models: ``encoder/layer/...`` leaves (the layer index removed) stacked along axis 0.

Example::

    params = tf2flax.init_params("bert_model.ckpt", None, flax_bert.params, preset="bert")
"""

from __future__ import annotations

import re

from ..rules import compile_rules, layer_index
from .base import Preset

_LEAF = [(re.compile(r"(^|/)gamma$"), r"\1scale"), (re.compile(r"(^|/)beta$"), r"\1bias"),
         (re.compile(r"_embeddings$"), "_embeddings/embedding")]

_GARDEN_EMBEDDINGS = {0: "word_embeddings", 1: "position_embeddings", 2: "token_type_embeddings"}
_GARDEN_BLOCK = [
    (r"^_attention_layer/_(query|key|value)_dense/", r"attention/self/\1/"),
    (r"^_attention_layer/_output_dense/", "attention/output/dense/"),
    (r"^_attention_output_dense/", "attention/output/dense/"),
    (r"^_attention_layer_norm/", "attention/output/LayerNorm/"),
    (r"^_intermediate_dense/", "intermediate/dense/"),
    (r"^_output_dense/", "output/dense/"),
    (r"^_output_layer_norm/", "output/LayerNorm/"),
]


def _leaf(path: str) -> str:
    for pattern, repl in _LEAF:
        path = pattern.sub(repl, path)
    return path


def _tf1(m: re.Match) -> str:
    return _leaf(re.sub(r"^encoder/layer_(\d+)/", r"encoder/layer/\1/", m.group(1)))


def _block(layer: int, rest: str, original: str) -> str:
    """A ``TransformerEncoderBlock``'s variable ``rest`` as FlaxBertModel's layer ``layer``."""
    for pattern, repl in _GARDEN_BLOCK:
        if re.match(pattern, rest):
            return _leaf(f"encoder/layer/{layer}/" + re.sub(pattern, repl, rest))
    return original


def _garden(m: re.Match) -> str:
    k, rest = layer_index(m.group(1), m.string), m.group(2)
    if k in _GARDEN_EMBEDDINGS and rest == "embeddings":
        return f"embeddings/{_GARDEN_EMBEDDINGS[k]}/embedding"
    if k == 3:
        return _leaf(f"embeddings/LayerNorm/{rest}")
    if rest in ("kernel", "bias"):
        return f"pooler/dense/{rest}"
    return _block(k - 4, rest, m.group(0))


_GARDEN_ATTRIBUTES = {"_embedding_layer/embeddings": "embeddings/word_embeddings/embedding",
                      "_position_embedding_layer/embeddings": "embeddings/position_embeddings/embedding",
                      "_type_embedding_layer/embeddings": "embeddings/token_type_embeddings/embedding",
                      "_embedding_norm_layer/gamma": "embeddings/LayerNorm/scale",
                      "_embedding_norm_layer/beta": "embeddings/LayerNorm/bias",
                      "_pooler_layer/kernel": "pooler/dense/kernel", "_pooler_layer/bias": "pooler/dense/bias"}


def _garden_attribute(m: re.Match) -> str:
    """The same encoder reached through its attributes (``_transformer_layers/N/...``, ``_pooler_layer``)."""
    rest = m.group(1)
    if rest in _GARDEN_ATTRIBUTES:
        return _GARDEN_ATTRIBUTES[rest]
    block = re.match(r"^_transformer_layers/(\d+)/(.+)$", rest)
    return _block(int(block.group(1)), block.group(2), m.group(0)) if block else m.group(0)


BERT = Preset(
    "bert",
    compile_rules([
        (r"^bert/((?:embeddings|encoder|pooler)/.*)$", _tf1),
        (r"^cls/.*$", lambda m: _leaf(m.group(0))),
        (r"^(?:model/)?encoder/layer_with_weights-(\d+)/(.+)$", _garden),
        (r"^(?:model/)?encoder/(_.+)$", _garden_attribute),
    ]),
    lambda name: "params",
    description="BERT: google-research/bert TF1 and Model Garden TF2 (3-D EinsumDense kernels) -> transformers' "
                "FlaxBertModel tree; scanned: encoder/layer/... stacked along axis 0",
    scan=compile_rules([(r"^((?:params/)?encoder/layer/){i}/", r"\1")]),
    stack_axis=0,
    fit=True,
)

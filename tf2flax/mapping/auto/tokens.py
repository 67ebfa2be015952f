"""Name normalisation for ``mapping="auto"``: leaf kinds, layer-name tokens and layer indices.

A path such as ``bert/encoder/layer_3/attention/self/query/kernel`` or ``layers/3/attn/q/kernel`` is
read as: a *leaf kind* (its last part, through :data:`LEAF_KINDS`: ``kernel``), a set of *name
tokens* for its layer (``{bert, encoder, layer, attention, query}`` after :data:`SYNONYMS`) and the
*indices* in it (``(3,)``), which are order, not name. The layer's *template* is its path with every
index replaced by ``#`` (``bert/encoder/layer_#/attention/self/query``): layers that share a template
are siblings, ordered by their indices.

Example::

    leaf_kind("moving_variance")                  # 'var'
    name_tokens("encoder/layers/0/attn/q")       # {'encoder', 'layer', 'attention', 'query'}
    template("bert/encoder/layer_3/attention")   # ('bert/encoder/layer_#/attention', (3,))
"""

from __future__ import annotations

import re

# Leaf names (the last part of a path) -> the kind of parameter they hold.
LEAF_KINDS = {
    "kernel": "kernel", "weight": "kernel", "weights": "kernel", "w": "kernel",
    "depthwise_kernel": "kernel", "depthwise_weight": "kernel",
    "bias": "bias", "b": "bias", "beta": "bias", "offset": "bias", "biases": "bias",
    "gamma": "scale", "scale": "scale", "g": "scale",
    "moving_mean": "mean", "running_mean": "mean", "mean": "mean", "batch_mean": "mean",
    "moving_variance": "var", "running_var": "var", "variance": "var", "var": "var", "moving_var": "var",
    "embeddings": "embedding", "embedding": "embedding", "embedding_table": "embedding", "table": "embedding",
    "recurrent_kernel": "recurrent_kernel",
}

# Leaf names that say "depthwise": a reason to move the channel axis of a conv kernel.
DEPTHWISE_LEAVES = {"depthwise_kernel", "depthwise_weight"}

# Whole path components (lower-cased, leading underscores stripped) that read as other words.
COMPOUNDS = {
    "layernorm": "norm", "layer_norm": "norm", "ln": "norm", "batch_normalization": "norm", "batchnorm": "norm",
    "batch_norm": "norm", "bn": "norm", "rmsnorm": "norm", "rms_norm": "norm", "group_norm": "norm",
    "self_attention": "attention", "self_attn": "attention", "multi_head_attention": "attention",
    "multiheadattention": "attention", "mha": "attention", "attention_layer": "attention",
    "attention_output": "out", "output_dense": "out", "out_proj": "out", "o_proj": "out",
    "q_proj": "query", "k_proj": "key", "v_proj": "value", "query_dense": "query", "key_dense": "key",
    "value_dense": "value", "token_type": "tokentype", "type_embeddings": "tokentype embedding",
    "token_type_embeddings": "tokentype embedding", "segment_embeddings": "tokentype embedding",
    "word_embeddings": "word embedding", "position_embeddings": "position embedding",
    "position_embedding": "position embedding", "depthwise_conv2d": "depthwise conv",
    "conv2d": "conv", "conv1d": "conv", "conv3d": "conv", "layer_with_weights": "",
}

# Single tokens -> one spelling.
SYNONYMS = {
    "q": "query", "k": "key", "v": "value", "o": "out", "output": "out", "outputs": "out",
    "attn": "attention", "self": "attention", "intermediate": "mlp", "ffn": "mlp", "feedforward": "mlp",
    "layers": "layer", "blocks": "block", "embeddings": "embedding", "embed": "embedding", "emb": "embedding",
    "wte": "word embedding", "wpe": "position embedding", "tok": "word", "token": "word", "pos": "position",
    "linear": "dense", "fc": "dense", "convolution": "conv", "dw": "depthwise", "segment": "tokentype",
    "type": "tokentype", "normalization": "norm", "layernorm": "norm",
}

# Tokens that say nothing about which layer a path is (containers, bookkeeping).
STOPWORDS = {"model", "operations", "operation", "attribute", "functional", "layer_with_weights", "with", "weights",
             "attributes",
             "variable", "value_", "keras", "sequential", "module", "params", "batch_stats", "tracked",
             "layer-with-weights", "", "cell"}

_INDEX = re.compile(r"\d+")
_SPLIT = re.compile(r"[^0-9a-zA-Z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_TRAILING = re.compile(r"^([a-z]+?)(\d+)$")
_KEEP_ER = frozenset({"layer", "encoder", "decoder", "transformer", "tower", "header"})
_SUFFIX = re.compile(r"[_-]\d+$")
_KERAS_SLOT = re.compile(r"^layer(_with_weights)?-\d+$")


def leaf_kind(name: str) -> str:
    """The kind of parameter a leaf name holds (``gamma`` -> ``scale``); the cleaned name if unknown."""
    clean = name.lstrip("_").lower()
    return LEAF_KINDS.get(clean, clean)


def split_leaf(name: str) -> tuple[str, str] | None:
    """A leaf name that carries part of its layer's name: ``word_embeddings`` -> ``('word', 'embedding')``;
    ``output_bias`` -> ``('output', 'bias')``; None for a plain leaf name."""
    clean = name.lstrip("_").lower()
    if clean in LEAF_KINDS:
        return None
    for suffix in ("embeddings", "embedding", "kernel", "bias", "weight", "weights"):
        if clean.endswith("_" + suffix) and len(clean) > len(suffix) + 1:
            return clean[: -len(suffix) - 1], LEAF_KINDS[suffix]
    return None


def _words(part: str) -> list[str]:
    """One path component as lower-case words with their indices split off (``conv2`` -> conv, 2)."""
    part = part.lstrip("_")
    low = part.lower()
    if low in COMPOUNDS:
        return COMPOUNDS[low].split()
    out: list[str] = []
    for chunk in _SPLIT.split(_CAMEL.sub("_", part)):
        chunk = chunk.lower()
        if not chunk:
            continue
        m = _TRAILING.match(chunk)
        if m and m.group(1) not in ("conv", "dense"):
            out += [m.group(1), m.group(2)]
        elif m and chunk.endswith(("1d", "2d", "3d")):
            out.append(chunk)
        elif m:
            out += [m.group(1), m.group(2)]
        else:
            out.append(COMPOUNDS.get(chunk, chunk))
    return out


def stem(word: str) -> str:
    """A word without a plural ``s`` or an agent ``er`` (``positions`` -> ``position``, ``pooler`` -> ``pool``)."""
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    if len(word) > 5 and word.endswith("er") and word not in _KEEP_ER:
        return word[:-2]
    return word


def name_tokens(path: str) -> frozenset[str]:
    """The set of normalised, non-numeric words of ``path`` (see the module docstring)."""
    tokens: set[str] = set()
    for part in path.split("/"):
        low = part.lstrip("_").lower()
        if _KERAS_SLOT.match(low):
            continue
        base = _SUFFIX.sub("", low)          # batch_normalization_1 reads as batch_normalization
        words = COMPOUNDS[base].split() if base in COMPOUNDS else _words(part)
        for w in words:
            if w.isdigit():
                continue
            for t in SYNONYMS.get(w, w).split():
                t = stem(t)
                if t not in STOPWORDS:
                    tokens.add(SYNONYMS.get(t, t))
    return frozenset(tokens)


def template(path: str) -> tuple[str, tuple[int, ...]]:
    """``path`` with every decimal index replaced by ``#``, and the indices (``conv2d`` keeps its digit)."""
    indices: list[int] = []

    def repl(m: re.Match) -> str:
        start, end = m.span()
        text = m.string
        after = text[end:end + 1]
        if after.isalpha():                      # conv2d, h2o: part of a word
            return m.group(0)
        indices.append(int(m.group(0)))
        return "#"

    return _INDEX.sub(repl, path), tuple(indices)


def index_spans(path: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each index :func:`template` replaces, in order."""
    return [m.span() for m in _INDEX.finditer(path) if not path[m.end():m.end() + 1].isalpha()]

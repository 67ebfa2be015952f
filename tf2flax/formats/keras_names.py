"""Keras variable names for the datasets of Keras weights files, without importing Keras.

Keras 3 (``.keras``, ``.weights.h5``) stores each layer's variables as ``<group>/vars/0``, ``vars/1``,
... in the order the layer created them (trainable first, then non-trainable), under a group per
layer: ``layers/<snake_case class name>[_<n>]`` for the layers of a Sequential or Functional model,
``<attribute>`` for a layer's own sub-layers (``layers/multi_head_attention/query_dense``,
``layers/lstm/cell``). :func:`keras3_names` walks the model's ``config.json`` beside those groups
and gives each dataset the path Keras gives the variable once the model is loaded
(``[w.path for w in model.weights]``), for the built-in layer classes of :data:`VARIABLES`; other
layers (custom classes) keep their stored paths. docs/keras.md has the table.

Keras 2 ``.h5`` files name their weights in attributes: the root (or ``model_weights``) group's
``layer_names``, each layer group's ``weight_names`` (``conv1_conv/kernel:0``); :func:`keras2_names`
reads them.

Example::

    config = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": "d1"}}]}}
    keras3_names(config, {"layers/dense": 2})
    # {'layers/dense/vars/0': 'd1/kernel', 'layers/dense/vars/1': 'd1/bias'}
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

Config = Mapping[str, Any]


def _with_bias(names: list[str], c: Config, key: str = "use_bias") -> list[str]:
    return names + (["bias"] if c.get(key, True) else [])


def _batch_norm(c: Config) -> list[str]:
    return (["gamma"] if c.get("scale", True) else []) + (["beta"] if c.get("center", True) else []) + \
        ["moving_mean", "moving_variance"]


def _layer_norm(c: Config) -> list[str]:
    rms = c.get("rms_scaling", False)
    return (["gamma"] if c.get("scale", True) or rms else []) + (["beta"] if c.get("center", True) and not rms else [])


def _group_norm(c: Config) -> list[str]:
    return (["gamma"] if c.get("scale", True) else []) + (["beta"] if c.get("center", True) else [])


def _attention(c: Config) -> list[str]:
    return (["scale"] if c.get("use_scale", False) else []) + \
        (["concat_score_weight"] if c.get("score_mode") == "concat" else [])


def _normalization(c: Config) -> list[str]:
    return [] if c.get("mean") is not None else ["mean", "variance", "count"]


def _kernel_bias(c: Config) -> list[str]:
    return _with_bias(["kernel"], c)


def _cell(c: Config) -> list[str]:
    return _with_bias(["kernel", "recurrent_kernel"], c)


# Built-in layer class -> the names of its own variables, in the order Keras saves them.
VARIABLES: dict[str, Callable[[Config], list[str]]] = {
    **{cls: _kernel_bias for cls in (
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "DepthwiseConv1D", "DepthwiseConv2D", "Convolution1D", "Convolution2D", "Convolution3D",
        "Convolution2DTranspose", "Convolution3DTranspose")},
    "EinsumDense": lambda c: ["kernel"] + (["bias"] if c.get("bias_axes") else []),
    "SeparableConv1D": lambda c: _with_bias(["depthwise_kernel", "pointwise_kernel"], c),
    "SeparableConv2D": lambda c: _with_bias(["depthwise_kernel", "pointwise_kernel"], c),
    "SeparableConvolution1D": lambda c: _with_bias(["depthwise_kernel", "pointwise_kernel"], c),
    "SeparableConvolution2D": lambda c: _with_bias(["depthwise_kernel", "pointwise_kernel"], c),
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "RMSNormalization": lambda c: ["scale"],
    "Embedding": lambda c: ["embeddings"],
    "PReLU": lambda c: ["alpha"],
    "Attention": _attention,
    "AdditiveAttention": lambda c: ["scale"] if c.get("use_scale", True) else [],
    "Normalization": _normalization,
    "SimpleRNNCell": _cell, "GRUCell": _cell, "LSTMCell": _cell, "ConvLSTMCell": _cell,
}
# Layers holding their sub-layers as attributes: attribute (stored group) -> (class, default name).
# Their variables' paths are scoped by the holder's name (``mha/query/kernel``, ``gru/gru_cell/kernel``).
_ATTENTION = {"query_dense": ("EinsumDense", "query"), "key_dense": ("EinsumDense", "key"),
              "value_dense": ("EinsumDense", "value"), "output_dense": ("EinsumDense", "attention_output"),
              "gate_dense": ("EinsumDense", "gate")}
_RNN_CELLS = {"SimpleRNN": ("SimpleRNNCell", "simple_rnn_cell"), "GRU": ("GRUCell", "gru_cell"),
              "LSTM": ("LSTMCell", "lstm_cell"), "ConvLSTM1D": ("ConvLSTMCell", "conv_lstm_cell"),
              "ConvLSTM2D": ("ConvLSTMCell", "conv_lstm_cell"), "ConvLSTM3D": ("ConvLSTMCell", "conv_lstm_cell")}
# Public names (the ``class_name`` of config.json) whose Python class, which names the stored group, differs.
_PYTHON_CLASS = {
    "GroupQueryAttention": "GroupedQueryAttention",
    **{f"Convolution{d}": f"Conv{d}" for d in ("1D", "2D", "3D", "1DTranspose", "2DTranspose", "3DTranspose")},
    **{f"SeparableConvolution{d}": f"SeparableConv{d}" for d in ("1D", "2D")},
    **{f"AvgPool{d}": f"AveragePooling{d}" for d in ("1D", "2D", "3D")},
    **{f"MaxPool{d}": f"MaxPooling{d}" for d in ("1D", "2D", "3D")},
    **{f"GlobalAvgPool{d}": f"GlobalAveragePooling{d}" for d in ("1D", "2D", "3D")},
    **{f"GlobalMaxPool{d}": f"GlobalMaxPooling{d}" for d in ("1D", "2D", "3D")},
}
MODELS = ("Functional", "Sequential", "Model")
MAX_NESTING = 128


def snake_case(name: str) -> str:
    """A class name as Keras names its group: ``BatchNormalization`` -> ``batch_normalization``,
    ``PReLU`` -> ``p_re_lu``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _class(cfg: Any) -> str:
    value = cfg.get("class_name") if isinstance(cfg, Mapping) else None
    return value if isinstance(value, str) else ""


def _inner(cfg: Any) -> Config:
    inner = cfg.get("config") if isinstance(cfg, Mapping) else None
    return inner if isinstance(inner, Mapping) else {}


class _Namer:
    """One walk of a model config beside the stored groups (path -> how many variables it holds)."""

    def __init__(self, groups: Mapping[str, int]):
        self.groups = groups
        self.names: dict[str, str] = {}
        # every stored ".../layers" (or tf.keras's ".../_layer_checkpoint_dependencies") group
        self.containers = {"/".join(parts[:i + 1]) for parts in (g.split("/") for g in groups)
                           for i, part in enumerate(parts) if part in ("layers", "_layer_checkpoint_dependencies")}

    def layer(self, cfg: Config, group: str, scope: str) -> None:
        if group.count("/") > MAX_NESTING:  # deeper than any stored group can be: a hostile config
            return
        cls, c = _class(cfg), _inner(cfg)
        count = self.groups.get(group, 0)
        name = c.get("name")
        if not isinstance(name, str) or not name:
            return
        if cls in MODELS:
            self.model(cfg, group)
            return
        variables = VARIABLES.get(cls)
        if variables is not None and count:
            self.assign(group, f"{scope}{name}/", variables(c), count)
        if cls in ("MultiHeadAttention", "GroupedQueryAttention", "GroupQueryAttention"):
            for attribute, (sub_cls, default) in _ATTENTION.items():
                for key in (attribute, "_" + attribute):
                    if f"{group}/{key}" in self.groups:
                        self.layer({"class_name": sub_cls, "config": {**c, "name": default, "bias_axes": c.get(
                            "use_bias", True)}}, f"{group}/{key}", f"{scope}{name}/")
        elif cls in _RNN_CELLS:  # the layer makes its cell: scoped by the layer (`gru/gru_cell/kernel`)
            sub_cls, default = _RNN_CELLS[cls]
            self.layer({"class_name": sub_cls, "config": {**c, "name": default}}, f"{group}/cell", f"{scope}{name}/")
        elif cls == "RNN":  # a cell given to RNN(cell) is its own layer: unscoped (`lstm_cell/kernel`)
            self.layer(c.get("cell"), f"{group}/cell", scope)
        elif cls == "Bidirectional":
            forward = c.get("layer")  # named forward_<name> by Keras already
            backward = c.get("backward_layer")  # a backward layer given keeps its name; else backward_<name>
            self.layer(forward, f"{group}/forward_layer", scope)
            self.layer(backward if backward is not None else _renamed(forward, "backward_"),
                       f"{group}/backward_layer", scope)
        elif cls == "TimeDistributed":
            self.layer(c.get("layer"), f"{group}/layer", scope)

    def model(self, cfg: Config, group: str) -> None:
        """The layers of a Sequential or Functional model: unscoped (Keras rebuilds them at top level)."""
        cls, c = _class(cfg), _inner(cfg)
        layers = c.get("layers")
        if not isinstance(layers, list):
            return
        if cls == "Sequential":
            layers = [layer for layer in layers if _class(layer) != "InputLayer"]
        base = f"{group}/layers" if group else "layers"
        if base not in self.containers:  # .keras files of tf.keras 2.13-2.15
            base = f"{group}/_layer_checkpoint_dependencies" if group else "_layer_checkpoint_dependencies"
        used: dict[str, int] = {}
        for layer in layers:
            if not isinstance(layer, Mapping):
                continue
            key = snake_case(_PYTHON_CLASS.get(_class(layer), _class(layer)))
            if key in used:
                used[key] += 1
                key = f"{key}_{used[key]}"
            else:
                used[key] = 0
            self.layer(layer, f"{base}/{key}", "")

    def assign(self, group: str, prefix: str, variables: list[str], count: int) -> None:
        if len(variables) != count:  # a configuration this table does not know (quantized, LoRA, ...)
            return
        for i, variable in enumerate(variables):
            self.names[f"{group}/vars/{i}"] = prefix + variable


def _renamed(cfg: Any, prefix: str) -> Any:
    if not isinstance(cfg, Mapping):
        return cfg
    c = _inner(cfg)
    name = c.get("name", "")
    if isinstance(name, str):
        name = prefix + name.removeprefix("forward_")
    return {**cfg, "config": {**c, "name": name}}


def keras3_names(config: Config, groups: Mapping[str, int]) -> dict[str, str]:
    """Stored dataset path -> Keras variable path, for the variables of the built-in layers.

    ``config``: the model's ``config.json`` (``{"class_name": "Functional", "config": {...}}``).
    ``groups``: every stored layer group with a ``vars`` group (``layers/dense``; ``""`` for the
    model's own) -> how many variables it holds. A model's layers are matched to their groups as
    Keras names them: snake_case Python class name, ``_1``, ``_2``... in layer order (the names Keras
    also stores, as string attributes, are not read: see ``hdf5.py``). Variables whose layer class is
    not known, or whose count does not match the table, are left out (they keep their stored paths).
    """
    namer = _Namer(groups)
    if _class(config) in MODELS:
        namer.model(config, "")
    else:  # a model of one layer, or a custom model class: its own variables only
        namer.layer(config, "", "")
    return namer.names


_INDEX_SUFFIX = re.compile(r":\d+$")


def keras2_weight(weight: str) -> str:
    """A Keras 2 weight name without its ``:0`` suffix."""
    return _INDEX_SUFFIX.sub("", weight)


def keras2_name(layer: str, weight: str) -> str:
    """A Keras 2 weight's name as Keras shows it (``w.name``) without ``:0``, from its layer's name on
    when the name holds it. A nested model's weights keep their own names (``conv1_conv/kernel`` in a
    ``resnet50`` layer), as Keras names them; :func:`keras2_names` prefixes the layer only to tell apart
    names that would collide.

    Example::

        keras2_name("conv1_conv", "conv1_conv/kernel:0")     # 'conv1_conv/kernel'
        keras2_name("resnet50", "conv1_conv/kernel:0")       # 'conv1_conv/kernel'
        keras2_name("dense", "sequential/dense/kernel")      # 'dense/kernel' (Keras 3's legacy writer)
    """
    parts = keras2_weight(weight).split("/")
    if layer in parts[:-1]:
        return "/".join(parts[parts.index(layer):])
    return "/".join(parts)


def keras2_names(weights: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Stored path -> name, for ``weights`` (stored path -> (layer, weight name)): :func:`keras2_name`,
    or ``<layer>/<name>`` for every weight whose name another weight has too (two nested models
    holding layers of the same name).

    Example::

        keras2_names({"a/dense/kernel:0": ("a", "dense/kernel:0"), "b/dense/kernel:0": ("b", "dense/kernel:0")})
        # {'a/dense/kernel:0': 'a/dense/kernel', 'b/dense/kernel:0': 'b/dense/kernel'}
    """
    bare = {path: keras2_name(layer, weight) for path, (layer, weight) in weights.items()}
    counts: dict[str, int] = {}
    for name in bare.values():
        counts[name] = counts.get(name, 0) + 1
    return {path: name if counts[name] == 1 else f"{weights[path][0]}/{name}" for path, name in bare.items()}

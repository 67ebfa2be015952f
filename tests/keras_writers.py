"""Write real Keras 3 files (``.keras``, ``.weights.h5``, legacy ``.h5``) for the Keras reader tests.

Every file is written by Keras itself, with seeded random weights (every variable, batch statistics
included, is overwritten, so no two variables hold the same values). Keras is imported lazily.
Each builder returns a compiled model that has run one training step (so the optimizer has its
variables); :func:`write_all` saves it in the three formats.

Models:

- ``mlp``: a Sequential of Dense layers (with an Embedding-free input), Adam;
- ``cnn``: Conv2D, BatchNormalization, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, Conv1D-free
  functional model with a nested Sequential head;
- ``encoder``: Embedding, MultiHeadAttention, LayerNormalization, a nested Functional feed-forward
  block and a nested Sequential;
- ``rnn``: Conv1D, GRU, LSTM, SimpleRNN, Bidirectional(LSTM), TimeDistributed(Dense), Conv3D input branch;
- ``wide``: two Dense layers with a 512 KiB kernel, for region reads;
- ``zoo``: many more built-in classes (normalizations, attentions, 1-D convolutions, RNN(cell),
  ConvLSTM2D, GroupQueryAttention, a Normalization adapted to data, ...);
- ``mobilenet``: ``keras.applications.MobileNetV2`` with random weights;
- ``mixed``: bfloat16 and float16 variables.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path
from typing import Any, Callable

import numpy as np

_KERAS = None


def keras():
    """Import Keras once (its TensorFlow backend, as ``tensorflow-cpu`` installs it)."""
    global _KERAS
    if _KERAS is None:
        import keras as _keras

        _KERAS = _keras
    return _KERAS


def randomize(model: Any, seed: int) -> None:
    """Overwrite every variable of ``model`` with seeded random values (variances kept positive)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        dtype = np.dtype(str(w.dtype))
        values = rng.standard_normal(tuple(w.shape)).astype(dtype)
        if "variance" in w.path:
            values = np.abs(values) + 0.5
        w.assign(values)


def _train(model: Any, x: Any, y: Any, optimizer: str = "adam", loss: str = "mse") -> Any:
    model.compile(optimizer=optimizer, loss=loss)
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    return model


def mlp() -> Any:
    k = keras()
    layers = k.layers
    model = k.Sequential([k.Input((12,)), layers.Dense(16, activation="relu"), layers.Dense(8, activation="relu"),
                          layers.Dense(3, use_bias=False)], name="mlp")
    return _train(model, np.ones((4, 12), "float32"), np.zeros((4, 3), "float32"))


def cnn() -> Any:
    k = keras()
    layers = k.layers
    inp = k.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = layers.BatchNormalization(center=False, name="dw_bn")(x)
    x = layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    x = layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)
    x = layers.Conv2D(5, 1, use_bias=False)(x)
    x = layers.GlobalAveragePooling2D()(x)
    head = k.Sequential([layers.Dense(7), layers.Dropout(0.1), layers.Dense(2)], name="head")
    model = k.Model(inp, head(x), name="cnn")
    return _train(model, np.ones((2, 16, 16, 3), "float32"), np.zeros((2, 2), "float32"), optimizer="sgd")


def encoder() -> Any:
    k = keras()
    layers = k.layers
    tokens = k.Input((10,), dtype="int32", name="tokens")
    x = layers.Embedding(50, 16, name="embed")(tokens)
    attn = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    x = layers.LayerNormalization(name="ln1")(layers.Add()([x, attn]))
    ffn_in = k.Input((10, 16))
    h = layers.Dense(32, activation="gelu", name="ffn_up")(ffn_in)
    h = layers.Dense(16, name="ffn_down")(h)
    ffn = k.Model(ffn_in, h, name="ffn")
    x = layers.LayerNormalization(rms_scaling=False, center=False, name="ln2")(layers.Add()([x, ffn(x)]))
    x = layers.GlobalAveragePooling1D()(x)
    pooler = k.Sequential([layers.Dense(8, activation="tanh"), layers.LayerNormalization()], name="pooler")
    out = layers.Dense(1, name="logit")(pooler(x))
    model = k.Model(tokens, out, name="encoder")
    return _train(model, np.ones((2, 10), "int32"), np.zeros((2, 1), "float32"))


def rnn() -> Any:
    k = keras()
    layers = k.layers
    seq = k.Input((6, 4), name="seq")
    x = layers.Conv1D(5, 2, padding="same", name="conv1d")(seq)
    x = layers.GRU(6, return_sequences=True, name="gru")(x)
    x = layers.LSTM(5, return_sequences=True, name="lstm")(x)
    x = layers.Bidirectional(layers.LSTM(3, return_sequences=True), name="bi")(x)
    x = layers.SimpleRNN(4, return_sequences=True, name="simple")(x)
    x = layers.TimeDistributed(layers.Dense(3), name="td")(x)
    x = layers.Flatten()(x)
    vol = k.Input((4, 4, 4, 1), name="volume")
    v = layers.Conv3D(2, 2, name="conv3d")(vol)
    v = layers.Flatten()(v)
    x = layers.Concatenate()([x, v])
    x = layers.PReLU(name="prelu")(layers.Dense(4, name="mix")(x))
    model = k.Model([seq, vol], layers.Dense(1, name="out")(x), name="rnn")
    return _train(model, [np.ones((2, 6, 4), "float32"), np.ones((2, 4, 4, 4, 1), "float32")],
                  np.zeros((2, 1), "float32"), optimizer="rmsprop")


def wide() -> Any:
    """Large enough tensors (a 256x512 kernel, 512 KiB) to tell a region read from a whole read."""
    k = keras()
    layers = k.layers
    model = k.Sequential([k.Input((256,)), layers.Dense(512, name="wide"), layers.Dense(8, name="narrow")],
                         name="wide_model")
    return _train(model, np.ones((2, 256), "float32"), np.zeros((2, 8), "float32"))


def zoo() -> Any:
    """Many built-in layer classes at once (each with a variable layout of its own), three inputs."""
    k = keras()
    layers = k.layers
    image = k.Input((8, 8, 3), name="image")
    x = layers.GroupNormalization(groups=3, name="gn")(image)
    x = layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = layers.UnitNormalization()(x)
    x = layers.Reshape((8, 32))(x)
    x = layers.Conv1D(6, 2, name="c1")(x)
    y = layers.Attention(use_scale=True, score_mode="concat", name="att")([x, x])
    y2 = layers.AdditiveAttention(name="add_att")([x, x])
    x = layers.Concatenate()([y, y2])
    x = layers.GRU(4, reset_after=False, return_sequences=True, name="gru_v1")(x)
    x = layers.SeparableConv1D(3, 2, name="sep1")(x)
    x = layers.DepthwiseConv1D(2, name="dw1")(x)
    x = layers.Conv1DTranspose(2, 2, name="up1")(x)
    x = layers.RNN(layers.LSTMCell(3), name="rnn_lstm")(x)
    x = layers.Dense(4, name="d")(x)
    x = layers.RMSNormalization(name="rms")(x)
    x = layers.EinsumDense("ab,bc->ac", output_shape=5, bias_axes="c", name="einsum")(x)
    clip = k.Input((3, 6, 6, 2), name="clip")
    c = layers.ConvLSTM2D(2, 3, name="convlstm")(clip)
    c = layers.Conv3D(1, 1, name="c3")(layers.Reshape((4, 4, 2, 1))(c))
    tokens = k.Input((5,), dtype="int32", name="tokens")
    e = layers.Embedding(20, 4, mask_zero=True, name="emb")(tokens)
    e = layers.GroupQueryAttention(head_dim=2, num_query_heads=2, num_key_value_heads=1, name="gqa")(e, e)
    e = layers.Bidirectional(layers.GRU(2), backward_layer=layers.GRU(2, go_backwards=True), name="bigru")(e)
    norm = layers.Normalization(name="norm")
    norm.adapt(np.arange(30, dtype="float32").reshape(10, 3))
    n = layers.Dense(2, name="nd")(norm(layers.Dense(3, name="pre")(e)))
    out = layers.Concatenate()([x, layers.Flatten()(c), n])
    model = k.Model([image, clip, tokens], out, name="zoo")
    return _train(model, [np.ones((2, 8, 8, 3), "float32"), np.ones((2, 3, 6, 6, 2), "float32"),
                          np.ones((2, 5), "int32")], np.zeros((2, 39), "float32"))


def mobilenet() -> Any:
    """Keras's own MobileNetV2 (random weights, 32x32 input): an application model as users save it."""
    k = keras()
    model = k.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=3, alpha=0.35)
    return _train(model, np.ones((2, 32, 32, 3), "float32"), np.zeros((2, 3), "float32"), optimizer="sgd")


def mixed() -> Any:
    """bfloat16 and float16 variables (Keras stores bfloat16 as 2-byte opaque data marked dtype="bfloat16")."""
    k = keras()
    layers = k.layers
    model = k.Sequential([k.Input((3,)), layers.Dense(4, dtype="bfloat16", name="bf"),
                          layers.Dense(2, dtype="float16", name="half")], name="mixed")
    return _train(model, np.ones((2, 3), "float32"), np.zeros((2, 2), "float32"))


MODELS: dict[str, Callable[[], Any]] = {"mlp": mlp, "cnn": cnn, "encoder": encoder, "rnn": rnn, "wide": wide,
                                        "zoo": zoo, "mobilenet": mobilenet, "mixed": mixed}


def _values(weights: Any) -> dict[str, np.ndarray]:
    return {w.path: np.asarray(w.numpy() if hasattr(w, "numpy") else w) for w in weights}


def _save_expected(path: Path, values: dict[str, np.ndarray]) -> None:
    """``path.npz`` (arrays by position; bfloat16 as its bits) and ``path.json`` (their names and dtypes):
    "/" is not safe in npz keys, and npz forgets bfloat16."""
    names = list(values)
    arrays = [values[n].view(np.uint16) if values[n].dtype.name == "bfloat16" else values[n] for n in names]
    np.savez(str(path) + ".npz", *arrays)
    Path(str(path) + ".json").write_text(json.dumps([[n, values[n].dtype.name] for n in names]))


def load_expected(path: Path) -> dict[str, np.ndarray]:
    """What :func:`write_all` recorded: variable name -> value."""
    import ml_dtypes

    names = json.loads(Path(str(path) + ".json").read_text())
    with np.load(str(path) + ".npz") as data:
        return {n: data[f"arr_{i}"].view(ml_dtypes.bfloat16) if dtype == "bfloat16" else data[f"arr_{i}"]
                for i, (n, dtype) in enumerate(names)}


def write_all(name: str, directory: Path, seed: int = 0) -> dict[str, Path]:
    """Build model ``name``, randomize it, save it as ``.keras``, ``.weights.h5``, legacy ``.h5`` and a
    Keras 2 layout weights-only ``.h5``, and record what Keras says each file holds:

    - ``<name>.keras.expected``: ``[w.path for w in load_model(.keras).weights]`` and their values
      (the Keras paths a ``.keras``, or a ``.weights.h5`` given its config, must list);
    - ``<name>.h5.expected``: the saving model's ``w.path`` and values (the names the legacy writer
      puts in ``weight_names``).
    """
    k = keras()
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = MODELS[name]()
    randomize(model, seed)
    paths = {"keras": directory / f"{name}.keras", "weights": directory / f"{name}.weights.h5",
             "h5": directory / f"{name}.h5", "h5_weights": directory / f"{name}.k2weights.h5"}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    model.save(paths["h5"])
    if name == "mobilenet":  # sharded save_weights: a .weights.json manifest and 1 MB .h5 shards
        paths["sharded"] = directory / f"{name}.sharded.weights.json"
        model.save_weights(paths["sharded"], max_shard_size=0.001)
    with h5py.File(paths["h5_weights"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    _save_expected(directory / f"{name}.h5.expected", _values(model.weights))
    loaded = k.saving.load_model(paths["keras"], compile=False)
    _save_expected(directory / f"{name}.keras.expected", _values(loaded.weights))
    optimizer = [np.asarray(v.numpy()) for v in model.optimizer.variables]
    _save_expected(directory / f"{name}.optimizer.expected",
                   {f"optimizer/vars/{i}": v for i, v in enumerate(optimizer)})
    return paths


def write_tf_keras(directory: Path, seed: int = 0) -> dict[str, Path]:
    """A real Keras 2 (``tf_keras``) model with attention, an LSTM and a nested Sequential, saved with
    ``model.save("m.h5")``, ``save_weights("w.h5")`` and ``model.save("m.keras")``; ``tf_keras.expected``:
    each weight's ``w.name`` and value."""
    import tf_keras as k2

    directory = Path(directory)
    layers = k2.layers
    inp = k2.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv1_conv")(inp)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Reshape((2, 2))(x)
    x = layers.MultiHeadAttention(2, 4, name="conv1_mha")(x, x)
    x = layers.LSTM(3, name="conv1_lstm")(x)
    head = k2.Sequential([layers.Dense(5), layers.Dense(2)], name="head")
    model = k2.Model(inp, head(x))
    model.compile("adam", "mse")
    model.fit(np.zeros((2, 8, 8, 3)), np.zeros((2, 2)), verbose=0)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(np.abs(rng.standard_normal(tuple(w.shape))).astype("float32") + 0.1)
    paths = {"h5": directory / "tf_keras.h5", "h5_weights": directory / "tf_keras.weights_only.h5",
             "keras": directory / "tf_keras.keras"}
    model.save(paths["h5"])
    model.save_weights(paths["h5_weights"])
    model.save(paths["keras"])  # tf.keras's own .keras format (_layer_checkpoint_dependencies-era layout)
    _save_expected(directory / "tf_keras.expected", {w.name: w.numpy() for w in model.weights})
    # transfer learning as users do it: a Keras application as a nested base model under a new head
    base = k2.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, include_top=False, alpha=0.35)
    inp = k2.Input((32, 32, 3))
    transfer = k2.Model(inp, layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(base(inp))))
    paths["transfer"] = directory / "tf_keras_transfer.h5"
    transfer.save(paths["transfer"])
    _save_expected(directory / "tf_keras_transfer.expected", {w.name: w.numpy() for w in transfer.weights})
    return paths


if __name__ == "__main__":  # python keras_writers.py OUT_DIR: every model, in every format
    out = Path(sys.argv[1])
    for model_name in MODELS:
        write_all(model_name, out)
    try:
        write_tf_keras(out)
    except ImportError:
        pass

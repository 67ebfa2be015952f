"""``mapping="auto"``: TensorFlow writes each checkpoint, a Flax user's NNX model loads it with no map,
and its output equals TensorFlow's; where the evidence does not settle a leaf, auto refuses and names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import automap_models as am
import tf2flax
from tf2flax.errors import MappingError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WRITERS = {"mlp": am.write_mlp, "cnn": am.write_cnn, "resnet": am.write_resnet, "depthwise": am.write_depthwise,
           "transformer": am.write_transformer,
           "resnet_keras_names": lambda d: am.write_resnet(d, keras_names=True), "tf1_mlp": am.write_tf1_mlp,
           "lstm": am.write_lstm, "exported": am.write_exported, "subclassed": am.write_subclassed_transformer,
           "keras_file": lambda d: am.write_cnn(d, keras_file=True)}


@pytest.fixture(scope="session")
def written(tmp_path_factory):
    """Every model pair's checkpoint, written once: ``{name: (path, input, TF output)}``."""
    out = {}
    for name, write in WRITERS.items():
        out[name] = write(tmp_path_factory.mktemp(f"auto_{name}"))
    return out


@pytest.fixture(scope="session")
def models():
    return am.nnx_models()


def load_and_run(models, path, model, x, **kwargs):
    nnx = models["nnx"]
    state = tf2flax.init_params(path, "auto", nnx.state(model), progress=False, **kwargs)
    nnx.update(model, state)
    return np.asarray(model(x))


@pytest.mark.parametrize("name, build", [
    ("mlp", lambda m: m["MLP"]([8, 16, 16, 16, 4], rngs=m["nnx"].Rngs(0))),
    ("tf1_mlp", lambda m: m["MLP"]([16, 16, 16, 16, 3], rngs=m["nnx"].Rngs(0))),
    ("cnn", lambda m: m["CNN"](rngs=m["nnx"].Rngs(0))),
    ("resnet", lambda m: m["ResNet"](rngs=m["nnx"].Rngs(0))),
    ("depthwise", lambda m: m["Depthwise"](rngs=m["nnx"].Rngs(0))),
    ("transformer", lambda m: m["Encoder"](rngs=m["nnx"].Rngs(0))),
    ("subclassed", lambda m: m["EncoderWithHead"](rngs=m["nnx"].Rngs(0))),
])
def test_auto_loads_exactly(written, models, name, build):
    path, x, expected = written[name]
    model = build(models)
    got = load_and_run(models, path, model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_uses_order_and_says_so(written, models):
    path, _, _ = written["mlp"]
    model = models["MLP"]([8, 16, 16, 16, 4], rngs=models["nnx"].Rngs(0))
    auto = tf2flax.suggest_mapping(path, models["nnx"].state(model))
    rows = {r["target"]: r for r in auto.rows()}
    assert any("order" in e for e in rows["layers/1/kernel"]["evidence"])
    assert rows["layers/1/kernel"]["confidence"] > 0.5
    assert "layers/2/kernel" in auto.summary()


def test_tf1_reports_skipped_and_no_unused(written, models):
    path, _, _ = written["tf1_mlp"]
    model = models["MLP"]([16, 16, 16, 16, 3], rngs=models["nnx"].Rngs(0))
    _, result = tf2flax.init_params(path, "auto", models["nnx"].state(model), return_report=True, progress=False)
    assert result.report.unused == [] and "global_step" in result.report.skipped


def test_refuses_same_shape_layers_without_order(written, models):
    path, _, _ = written["mlp"]
    model = models["Unordered"](rngs=models["nnx"].Rngs(0))
    with pytest.raises(MappingError) as e:
        tf2flax.init_params(path, "auto", models["nnx"].state(model), progress=False)
    msg = str(e.value)
    assert "alpha/kernel" in msg and "beta/kernel" in msg and "the target has no order" in msg
    assert "inp/kernel" not in msg  # decided layers are not listed


def test_refusal_settled_by_a_hint(written, models):
    path, x, expected = written["mlp"]
    nnx = models["nnx"]
    model = models["Unordered"](rngs=nnx.Rngs(0))
    layer = "model/_functional/_operations/{}/".format   # Sequential's layers by position (1 = first Dense)
    hint = tf2flax.AutoMap(map={layer(2) + "_kernel": "alpha/kernel", layer(2) + "bias": "alpha/bias",
                                layer(3) + "_kernel": "beta/kernel", layer(3) + "bias": "beta/bias"})
    auto = tf2flax.suggest_mapping(path, nnx.state(model), hint)
    assert not auto.undecided
    state = tf2flax.init_params(path, hint, nnx.state(model), progress=False)
    nnx.update(model, state)
    h = x
    for layer in (model.inp, model.alpha, model.beta):
        h = np.maximum(np.asarray(layer(h)), 0)
    np.testing.assert_allclose(np.asarray(model.out(h)), expected, rtol=1e-5, atol=1e-5)


def test_refuses_a_missing_layer(written, models):
    path, _, _ = written["cnn"]
    model = models["CNNWithExtra"](rngs=models["nnx"].Rngs(0))
    with pytest.raises(MappingError) as e:
        tf2flax.init_params(path, "auto", models["nnx"].state(model), progress=False)
    assert "aux_head/kernel" in str(e.value) and "no checkpoint layer" in str(e.value)
    # leaving it unset is a hint auto accepts
    hint = tf2flax.AutoMap(leave=[r"aux_head/.*"])
    plan = tf2flax.plan_params(path, hint, models["nnx"].state(model))
    assert plan.report.unset == ["aux_head/bias", "aux_head/kernel"]


def test_refuses_a_recurrent_cell(written, models):
    path, _, _ = written["lstm"]
    model = models["LSTMNet"](rngs=models["nnx"].Rngs(0))
    with pytest.raises(MappingError) as e:
        tf2flax.init_params(path, "auto", models["nnx"].state(model), progress=False)
    assert "cell/" in str(e.value) and "gates" in str(e.value)


def test_refuses_a_recurrent_cell_with_matching_shapes(written):
    """A target with TF's fused shapes is still refused: auto does not know the gate layout."""
    import jax

    path, _, _ = written["lstm"]
    params = {"rnn": {"kernel": jax.ShapeDtypeStruct((3, 20), np.float32),
                      "recurrent_kernel": jax.ShapeDtypeStruct((5, 20), np.float32),
                      "bias": jax.ShapeDtypeStruct((20,), np.float32)},
              "head": {"kernel": jax.ShapeDtypeStruct((5, 2), np.float32),
                       "bias": jax.ShapeDtypeStruct((2,), np.float32)}}
    with pytest.raises(MappingError) as e:
        tf2flax.plan_params(path, "auto", params)
    assert "rnn/kernel" in str(e.value) and "gate" in str(e.value)


def test_saved_map_reproduces_the_load(written, models, tmp_path):
    from tf2flax.conversion.mapfile import load_map_file

    path, x, expected = written["transformer"]
    nnx = models["nnx"]
    model = models["Encoder"](rngs=nnx.Rngs(0))
    auto = tf2flax.suggest_mapping(path, nnx.state(model))
    for suffix in ("yaml", "json"):
        auto.save(tmp_path / f"map.{suffix}")
        kwargs = load_map_file(tmp_path / f"map.{suffix}")
        state = tf2flax.init_params(path, kwargs.pop("mapping"), nnx.state(model), progress=False, **kwargs)
        nnx.update(model, state)
        np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)
    data = auto.to_json()
    assert json.loads(json.dumps(data))["undecided"] == []


# ------------------------------------------------------------------------------------------------
# TF1 BERT (the shipped examples/bert_tiny, written by google-research/bert's code) into NNX BERT
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert():
    sys.path.insert(0, str(EXAMPLES))
    import bert_tf1_to_flax as ex

    cfg = json.loads((EXAMPLES / "bert_tiny" / "bert_config.json").read_text())
    ref = np.load(EXAMPLES / "bert_tiny" / "reference_outputs.npz")
    return ex, cfg, ref


def test_tf1_bert_into_nnx_bert(bert, models):
    ex, cfg, ref = bert
    nnx = models["nnx"]
    model = ex.BertModel(cfg, rngs=nnx.Rngs(0))
    state = tf2flax.init_params(EXAMPLES / "bert_tiny", "auto", nnx.state(model), progress=False)
    nnx.update(model, state)
    seq, pooled = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
    np.testing.assert_allclose(np.asarray(seq), ref["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref["pooled_output"], atol=1e-4)


def test_garden_bert_into_nnx_bert(bert, models):
    ex, cfg, _ = bert
    nnx = models["nnx"]
    garden = EXAMPLES / "bert_tiny_garden"
    cfg = json.loads((garden / "bert_config.json").read_text())
    ref = np.load(garden / "reference_outputs.npz")
    model = ex.BertModel(cfg, rngs=nnx.Rngs(0))
    state = tf2flax.init_params(garden, "auto", nnx.state(model), progress=False)
    nnx.update(model, state)
    seq, pooled = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
    np.testing.assert_allclose(np.asarray(seq), ref["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref["pooled_output"], atol=1e-4)


def scanned_bert(ex, cfg, nnx):
    """examples/bert_auto.py's NNX BERT with its layers scanned: one BertLayer created under ``nnx.vmap``
    (every leaf gets a leading layer axis) and run with ``nnx.scan`` (the example's own class, so the
    test and the example cannot drift apart)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bert_auto_example", EXAMPLES / "bert_auto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScannedBert(cfg, rngs=nnx.Rngs(0))


def test_tf1_bert_into_scanned_nnx_bert(bert, models):
    ex, cfg, ref = bert
    nnx = models["nnx"]
    model = scanned_bert(ex, cfg, nnx)
    assert model.encoder.layers.attention.query.kernel.shape == (2, 32, 2, 16)
    auto = tf2flax.suggest_mapping(EXAMPLES / "bert_tiny", nnx.state(model))
    rows = {r["target"]: r for r in auto.rows()}
    query = rows["encoder/layers/attention/query/kernel"]
    assert query["source"] == "bert/encoder/layer_{i}/attention/self/query/kernel"
    assert query["transform"] == ["reshape", [2, 32, 2, 16]]
    state = tf2flax.init_params(EXAMPLES / "bert_tiny", "auto", nnx.state(model), progress=False)
    nnx.update(model, state)
    seq, pooled = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
    np.testing.assert_allclose(np.asarray(seq), ref["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref["pooled_output"], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# CLI: python -m tf2flax suggest CKPT TARGET -o map.yaml
# ------------------------------------------------------------------------------------------------

def write_target_file(model, nnx, path):
    """The three lines docs/automap.md shows."""
    import jax

    json.dump(jax.tree_util.tree_map(lambda x: {"shape": list(x.shape), "dtype": str(x.dtype)},
                                     nnx.state(model, (nnx.Param, nnx.BatchStat)).to_pure_dict()),
              open(path, "w"))


def test_cli_suggest_writes_a_map_that_loads(bert, models, tmp_path, capsys):
    from tf2flax.cli import main
    from tf2flax.conversion.mapfile import load_map_file

    ex, cfg, ref = bert
    nnx = models["nnx"]
    model = ex.BertModel(cfg, rngs=nnx.Rngs(0))
    write_target_file(model, nnx, tmp_path / "target.json")
    assert main(["suggest", str(EXAMPLES / "bert_tiny"), str(tmp_path / "target.json"),
                 "-o", str(tmp_path / "map.yaml")]) == 0
    out = capsys.readouterr().out
    assert "encoder/layers/1/attention/query/kernel" in out and "cls/predictions/output" in out
    kwargs = load_map_file(tmp_path / "map.yaml")
    nnx.update(model, tf2flax.init_params(EXAMPLES / "bert_tiny", kwargs.pop("mapping"), nnx.state(model),
                                          progress=False, **kwargs))
    seq, _ = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
    np.testing.assert_allclose(np.asarray(seq), ref["sequence_output"], atol=1e-4)
    assert main(["suggest", str(EXAMPLES / "bert_tiny"), str(tmp_path / "target.json"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["decisions"]) == 39 and data["undecided"] == []


def test_cli_suggest_refuses_with_one_error_line(written, models, tmp_path, capsys):
    from tf2flax.cli import main

    nnx = models["nnx"]
    write_target_file(models["Unordered"](rngs=nnx.Rngs(0)), nnx, tmp_path / "target.json")
    assert main(["suggest", written["mlp"][0], str(tmp_path / "target.json"), "-o", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tf2flax: error: auto mapping refused") and "alpha/kernel" in err
    assert "--leave" in err and "AutoMap" not in err
    assert not (tmp_path / "m.yaml").exists()
    assert main(["suggest", written["mlp"][0], str(tmp_path / "missing.json")]) == 2
    assert "target file" in capsys.readouterr().err


def test_convert_takes_a_reviewed_suggestion(bert, models, tmp_path):
    import orbax.checkpoint as ocp

    ex, cfg, _ = bert
    nnx = models["nnx"]
    auto = tf2flax.suggest_mapping(EXAMPLES / "bert_tiny", nnx.state(ex.BertModel(cfg, rngs=nnx.Rngs(0))))
    tf2flax.convert(EXAMPLES / "bert_tiny", tmp_path / "out", mapping=auto)
    tree = ocp.v1.load(tmp_path / "out")
    want = tf2flax.load_variable(EXAMPLES / "bert_tiny", "bert/encoder/layer_1/attention/self/query/kernel")
    np.testing.assert_array_equal(np.asarray(tree["encoder"]["layers"]["1"]["attention"]["query"]["kernel"]),
                                  want.reshape(32, 2, 16))
    with pytest.raises(MappingError, match="suggest"):
        tf2flax.convert(EXAMPLES / "bert_tiny", tmp_path / "out2", mapping="auto")


def test_linen_variables_target(written):
    """linen's {'params', 'batch_stats'}: a BatchNorm's scale and mean are one layer across collections."""
    import flax.linen as nn
    import jax

    path, x, expected = written["cnn"]

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(2):
                x = nn.Conv(8, (3, 3))(x)
                x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x))
            return nn.Dense(5)(x.mean(axis=(1, 2)))

    abstract = jax.eval_shape(CNN().init, jax.random.key(0), x)
    variables = tf2flax.init_params(path, "auto", abstract, progress=False)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_allclose(np.asarray(CNN().apply(variables, x)), expected, rtol=1e-5, atol=1e-5)


def test_state_without_order_refuses_keras_named_resnet(written, models):
    """Keras's own names (batch_normalization_1, ...) and nnx.state (sorted by name): the stem's and the
    first block's three 8-channel BatchNorms are told apart by order only, and the state has none."""
    path, _, _ = written["resnet_keras_names"]
    model = models["ResNet"](rngs=models["nnx"].Rngs(0))
    with pytest.raises(MappingError) as e:
        tf2flax.init_params(path, "auto", models["nnx"].state(model), progress=False)
    msg = str(e.value)
    assert "'stem_norm'" in msg and "'blocks/0/norm1'" in msg and "'blocks/0/norm2'" in msg
    assert "blocks/1/norm1" not in msg


def test_module_attribute_order_settles_keras_named_resnet(written, models):
    path, x, expected = written["resnet_keras_names"]
    model = models["ResNet"](rngs=models["nnx"].Rngs(0))
    auto = tf2flax.suggest_mapping(path, model)
    assert any("attribute order" in e for r in auto.rows() if r["target"] == "stem_norm/mean" for e in r["evidence"])
    assert tf2flax.init_params(path, "auto", model, progress=False) is model
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)


def test_bert_auto_example_runs():
    import subprocess

    done = subprocess.run([sys.executable, str(EXAMPLES / "bert_auto.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BertModel: max |flax - TensorFlow|" in done.stdout and "ScannedBert" in done.stdout


def test_parameters_of_their_own(tmp_path):
    """Bare variables (a position embedding, a class token) are one-leaf layers matched by name and shape."""
    import jax
    from tf_writers import tf

    rng = np.random.default_rng(8)
    values = {"pos_emb": rng.normal(size=(1, 5, 16)), "cls_token": rng.normal(size=(1, 1, 16)),
              "w": rng.normal(size=(16, 4)), "b": rng.normal(size=(4,))}
    module = tf().Module()
    module.pos_emb = tf().Variable(values["pos_emb"].astype(np.float32))
    module.cls_token = tf().Variable(values["cls_token"].astype(np.float32))
    module.head = tf().Module()
    module.head.w = tf().Variable(values["w"].astype(np.float32))
    module.head.b = tf().Variable(values["b"].astype(np.float32))
    path = tf().train.Checkpoint(model=module).write(str(tmp_path / "ckpt"))
    S = jax.ShapeDtypeStruct
    params = {"pos_embedding": S((1, 5, 16), np.float32), "cls": S((1, 1, 16), np.float32),
              "classifier": {"kernel": S((16, 4), np.float32), "bias": S((4,), np.float32)}}
    got = tf2flax.init_params(path, "auto", params, progress=False)
    np.testing.assert_array_equal(got["pos_embedding"], values["pos_emb"].astype(np.float32))
    np.testing.assert_array_equal(got["cls"], values["cls_token"].astype(np.float32))
    np.testing.assert_array_equal(got["classifier"]["kernel"], values["w"].astype(np.float32))


def test_a_transform_hint_settles_a_layout(tmp_path):
    """A checkpoint that stores its kernel [out, in]: auto never transposes on its own (it refuses, the
    shapes do not fit); given the transform, it matches with it."""
    import jax
    from tf_writers import tf

    kernel = np.random.default_rng(9).normal(size=(4, 16)).astype(np.float32)   # [out, in]
    module = tf().Module()
    module.proj = tf().Module()
    module.proj.weight = tf().Variable(kernel)
    module.proj.bias = tf().Variable(np.arange(4, dtype=np.float32))
    path = tf().train.Checkpoint(model=module).write(str(tmp_path / "ckpt"))
    params = {"proj": {"kernel": jax.ShapeDtypeStruct((16, 4), np.float32),
                       "bias": jax.ShapeDtypeStruct((4,), np.float32)}}
    with pytest.raises(MappingError, match="proj/kernel"):
        tf2flax.plan_params(path, "auto", params)
    got = tf2flax.init_params(path, "auto", params, transforms={r".*/kernel": "transpose"}, progress=False)
    np.testing.assert_array_equal(got["proj"]["kernel"], kernel.T)


def test_init_opt_state_follows_the_inferred_map(bert, models):
    import jax
    import optax

    ex, cfg, _ = bert
    nnx = models["nnx"]
    ckpt = EXAMPLES / "bert_tiny"
    params = tf2flax.init_params(ckpt, "auto", nnx.state(ex.BertModel(cfg, rngs=nnx.Rngs(0)), nnx.Param),
                                 progress=False)
    tx = optax.adamw(1e-4)
    opt = tf2flax.init_opt_state(ckpt, "auto", params, jax.eval_shape(tx.init, params))
    got = opt[0].mu["encoder"]["layers"][0]["attention"]["query"]["kernel"]
    want = tf2flax.load_variable(ckpt, "bert/encoder/layer_0/attention/self/query/kernel/adam_m")
    np.testing.assert_array_equal(np.asarray(got), want.reshape(32, 2, 16))


def test_rules_as_hints(written, models):
    """A rule that renames two checkpoint layers gives auto the names it lacked; it fills in the rest."""
    path, x, expected = written["mlp"]
    nnx = models["nnx"]
    model = models["Unordered"](rngs=nnx.Rngs(0))
    rules = [(r"^model/_functional/_operations/2/", "alpha/"), (r"^model/_functional/_operations/3/", "beta/")]
    auto = tf2flax.suggest_mapping(path, nnx.state(model), rules=rules)
    evidence = {d.target: " ".join(d.evidence) for d in auto.decisions}
    assert "shared: alpha" in evidence["alpha"] and "shared: beta" in evidence["beta"]
    nnx.update(model, tf2flax.init_params(path, "auto", nnx.state(model), rules=rules, progress=False))
    h = x
    for layer in (model.inp, model.alpha, model.beta):
        h = np.maximum(np.asarray(layer(h)), 0)
    np.testing.assert_allclose(np.asarray(model.out(h)), expected, rtol=1e-5, atol=1e-5)


def test_keras_export_savedmodel(written, models):
    """model.export() keeps variables in flat lists, twice: layers come from the full names, copies
    (same name, same stored checksum) are one tensor."""
    path, x, expected = written["exported"]
    nnx = models["nnx"]

    class Net(nnx.Module):
        def __init__(self, *, rngs):
            self.hidden = nnx.Linear(6, 8, rngs=rngs)
            self.norm = nnx.BatchNorm(8, epsilon=1e-3, use_running_average=True, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.norm(nnx.relu(self.hidden(x))))

    model = Net(rngs=nnx.Rngs(0))
    nnx.update(model, tf2flax.init_params(path, "auto", nnx.state(model), progress=False))
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)


def test_names_and_order_that_disagree_are_refused(tmp_path, models):
    """The model defines ``key`` before ``query``; Keras created ``query`` first. Order alone would swap
    them, the names say otherwise: auto refuses instead of picking one."""
    keras = am._keras()
    nnx = models["nnx"]
    inp = keras.Input((4,))
    out = keras.layers.Dense(4, name="key_proj")(keras.layers.Dense(4, name="query_proj")(inp))
    path = am._save_ckpt(keras.Model(inp, out), tmp_path)

    class Swapped(nnx.Module):
        def __init__(self, *, rngs):
            self.key = nnx.Linear(4, 4, rngs=rngs)
            self.query = nnx.Linear(4, 4, rngs=rngs)

    with pytest.raises(MappingError, match="names and order disagree"):
        tf2flax.plan_params(path, "auto", Swapped(rngs=nnx.Rngs(0)))
    # without the order (a state, sorted by name), the names decide
    auto = tf2flax.suggest_mapping(path, nnx.state(Swapped(rngs=nnx.Rngs(0))))
    assert {r["target"]: r["source"] for r in auto.rows()}["query/kernel"] == "query_proj/kernel"


def test_keras_file(written, models):
    """A ``.keras`` file: no object graph, Keras's layer names (``batch_normalization_1/gamma``), the
    same inference. Skipped until tf2flax reads ``.keras`` files."""
    from tf2flax.errors import Tf2FlaxError

    path, x, expected = written["keras_file"]
    try:
        tf2flax.open_checkpoint(path).close()
    except Tf2FlaxError as e:
        pytest.skip(f"this tf2flax does not read .keras files yet: {e}")
    model = models["CNN"](rngs=models["nnx"].Rngs(0))
    got = load_and_run(models, path, model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_save_refuses_what_a_map_file_cannot_hold(written, models, tmp_path):
    path, _, _ = written["mlp"]
    nnx = models["nnx"]
    undecided = tf2flax.suggest_mapping(path, nnx.state(models["Unordered"](rngs=nnx.Rngs(0))))
    with pytest.raises(MappingError, match="alpha"):
        undecided.save(tmp_path / "map.yaml")
    model = models["MLP"]([8, 16, 16, 16, 4], rngs=nnx.Rngs(0))
    with_fn = tf2flax.suggest_mapping(path, nnx.state(model), transforms={"layers/0/bias": lambda b: b})
    with pytest.raises(MappingError, match="cannot hold"):
        with_fn.save(tmp_path / "map.yaml")
    assert not (tmp_path / "map.yaml").exists()


def test_partitioned_target_takes_one_variable():
    """``<var>/part_0, part_1`` target leaves are one variable (TensorFlow's partitioned variable)."""
    import jax

    part = jax.ShapeDtypeStruct((64, 32), np.float32)
    params = {"embeddings": {"word": {"embedding": {"part_0": part, "part_1": part}}}}
    auto = tf2flax.suggest_mapping(EXAMPLES / "bert_tiny", params)
    assert [(r["target"], r["source"]) for r in auto.rows()] == [("embeddings/word/embedding",
                                                                   "bert/embeddings/word_embeddings")]
    got = tf2flax.init_params(EXAMPLES / "bert_tiny", "auto", params, progress=False)
    want = tf2flax.load_variable(EXAMPLES / "bert_tiny", "bert/embeddings/word_embeddings")
    np.testing.assert_array_equal(got["embeddings"]["word"]["embedding"]["part_1"], want[64:])


def test_keras_resnet_auto_example_runs():
    """docs/automap.md's excerpted worked example, run in full (Keras trains and saves, NNX loads)."""
    import subprocess

    done = subprocess.run([sys.executable, str(EXAMPLES / "keras_resnet_auto.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max |flax - keras|" in done.stdout and "order" in done.stdout


def test_garden_bert_into_scanned_nnx_bert(bert, models):
    """Model Garden's TF2 checkpoint: the object graph orders layer_with_weights-4, -5; the full names
    (transformer/layer_0, layer_1) give the {i} stacks."""
    ex, _, _ = bert
    nnx = models["nnx"]
    garden = EXAMPLES / "bert_tiny_garden"
    cfg = json.loads((garden / "bert_config.json").read_text())
    ref = np.load(garden / "reference_outputs.npz")
    model = scanned_bert(ex, cfg, nnx)
    nnx.update(model, tf2flax.init_params(garden, "auto", nnx.state(model), progress=False))
    seq, pooled = model(ref["input_ids"], ref["token_type_ids"], ref["input_mask"])
    np.testing.assert_allclose(np.asarray(seq), ref["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref["pooled_output"], atol=1e-4)

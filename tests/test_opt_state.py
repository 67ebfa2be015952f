"""``init_opt_state``: TensorFlow optimizer slots into optax states, judged by TensorFlow itself.

For each slot family a tiny model is trained a few steps in TF (``opt_writers``). The loaded state's
moments must equal TF's slots bit for bit, its count TF's step; one optax step from the loaded
params and state must land where one more TF step did (1e-6 relative), also sharded on 8 devices.
Keras 2 (``tf_keras``) is not installed here (it needs the ``tensorflow`` package, not
``tensorflow-cpu``); its OptimizerV2 layout (object-graph ``slot_variables``) is tested through TF's
own ``tf.compat.v1`` optimizer under eager, which saves slots the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import opt_writers as W
import tf2flax
from tf2flax.errors import MappingError

B1, B2 = 0.9, 0.999
MAPS = {
    "tf1": {"d1/": "params/d1/", "d2/": "params/d2/"},
    "keras3": {"seq/d1/": "params/d1/", "seq/d2/": "params/d2/"},
}
RULES = [(r"d1/kernel$", P(None, "model")), (r"d2/kernel$", P("data", "model")), (r"bias$", P("model"))]


def nest(flat: dict[str, np.ndarray]) -> dict:
    """``{'d1/kernel': x}`` -> ``{'params': {'d1': {'kernel': x}}}``."""
    out: dict = {"params": {}}
    for name, value in flat.items():
        layer, leaf = name.split("/")
        out["params"].setdefault(layer, {})[leaf] = jnp.asarray(value)
    return out


def flat(tree: dict) -> dict[str, np.ndarray]:
    return {f"{layer}/{leaf}": np.asarray(v) for layer, leaves in tree["params"].items() for leaf, v in leaves.items()}


def eps_hat(eps: float, step: int) -> float:
    """TF1/Keras Adam add epsilon before bias correction (to sqrt(v), not sqrt(v_hat)): optax's eps for TF's
    next step, number step + 1."""
    return eps / math.sqrt(1 - B2 ** (step + 1))


def bert_adamw(lr: float, wd: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """BERT's AdamWeightDecay in optax: Adam without bias correction, decay masked off biases."""
    def init(params):
        return optax.scale_by_adam().init(params)

    def update(g, state, params=None):
        mu = jax.tree.map(lambda m, x: B1 * m + (1 - B1) * x, state.mu, g)
        nu = jax.tree.map(lambda v, x: B2 * v + (1 - B2) * jnp.square(x), state.nu, g)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, optax.ScaleByAdamState(optax.safe_increment(state.count), mu, nu)

    not_bias = lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key != "bias", p)  # noqa: E731
    return optax.chain(optax.GradientTransformation(init, update), optax.add_decayed_weights(wd, not_bias),
                       optax.scale(-lr))


def adam_eps_hat(run: W.TrainedRun) -> optax.GradientTransformation:
    return optax.adam(W.LR, B1, B2, eps_hat(1e-7, run.step))


@dataclasses.dataclass(frozen=True)
class Family:
    """One slot family's test setup: TF writer, map, the optax optimizer matching TF's next step, the
    state holding the slots, extra ``init_opt_state`` options, and {state field: TF slot name pattern}."""

    write: Callable[[Path], W.TrainedRun]
    map: str
    optimizer: Callable[[W.TrainedRun], optax.GradientTransformation]
    slots: dict[str, str] | None
    state: type = optax.ScaleByAdamState
    options: dict = dataclasses.field(default_factory=dict)
    name: str | None = None          # report.family, when it differs from the key


FAMILIES = {
    "tf1_adam": Family(lambda d: W.tf1_adam(d, B1, B2), "tf1", adam_eps_hat, {"mu": "{}/Adam", "nu": "{}/Adam_1"}),
    "bert_adam": Family(lambda d: W.bert_adam(d, b1=B1, b2=B2), "tf1", lambda r: bert_adamw(W.LR, 0.01),
                        {"mu": "{}/adam_m", "nu": "{}/adam_v"}),
    "tf1_momentum": Family(W.tf1_momentum, "tf1", lambda r: optax.sgd(W.LR, momentum=0.9),
                           {"trace": "{}/Momentum"}, optax.TraceState),
    "tf2_slots": Family(lambda d: W.eager_v1_adam(d, B1, B2), "tf1", adam_eps_hat, {"mu": "{}/m", "nu": "{}/v"},
                        options={"b1": B1}),
    "keras3": Family(lambda d: W.keras3_adam(d, B1, B2), "keras3", adam_eps_hat, {"mu": "{}/m", "nu": "{}/v"}),
    "keras3_sgd": Family(W.keras3_sgd, "keras3", lambda r: optax.sgd(W.LR, momentum=0.9), {"trace": "{}/m"},
                         optax.TraceState, name="keras3"),
    "mtf_adafactor": Family(W.mtf_adafactor, "tf1", lambda r: optax.adafactor(W.LR, min_dim_size_to_factor=3), None,
                            optax.FactoredState),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, W.TrainedRun]:
    return {name: family.write(tmp_path_factory.mktemp(name)) for name, family in FAMILIES.items()}


def _find(state, kind):
    return [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(s, kind)]


def _load(run, family, **options):
    spec = FAMILIES[family]
    params = nest(run.params)
    tx = spec.optimizer(run)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS[spec.map], params, tx.init(params),
                                           return_report=True, progress=False, **{**spec.options, **options})
    return params, tx, state, report


def _expected_slots(run, family) -> dict[str, dict[str, np.ndarray]]:
    """{field: {param name: TF's slot}} for the state's slot fields."""
    names = FAMILIES[family].slots
    if family == "keras3_sgd":   # Keras keeps -lr x the trace
        return {"trace": {p: run.slots[f"{p}/m"] * np.float32(-1 / W.LR) for p in W.SHAPES}}
    if names is not None:
        return {field: {p: run.slots[pattern.format(p)] for p in W.SHAPES} for field, pattern in names.items()}
    out: dict = {"v_row": {}, "v_col": {}, "v": {}}
    for p, shape in W.SHAPES.items():
        if len(shape) < 2:
            out["v"][p] = run.slots[f"{p}_slot_v"]
            continue
        d0 = int(np.argsort(shape)[-1])       # optax's v_row reduces its largest axis (ties: the later one)
        mtf = sorted(range(len(shape)), key=lambda a: -shape[a])[0]   # Mesh-TF's vr: the largest (the earlier)
        row, col = (f"{p}_slot_vr", f"{p}_slot_vc") if d0 == mtf else (f"{p}_slot_vc", f"{p}_slot_vr")
        out["v_row"][p], out["v_col"][p] = run.slots[row], run.slots[col]
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_moments_equal_tf_slots_and_count_equals_step(runs, family):
    run = runs[family]
    _, _, state, report = _load(run, family)
    assert report.family == (FAMILIES[family].name or family)
    (node,) = _find(state, FAMILIES[family].state)
    for field, expected in _expected_slots(run, family).items():
        got = flat(getattr(node, field))
        for p, want in expected.items():
            np.testing.assert_array_equal(got[p], want, err_msg=f"{family} {field} {p}")
    assert report.count == run.step
    if "count" in node._fields:
        assert int(node.count) == run.step
    assert not report.unused and not report.unset, report.summary()


def _step(tx, params, state, grads):
    updates, _ = tx.update(grads, state, params)
    return optax.apply_updates(params, updates)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_optax_step_matches_one_tf_step(runs, family):
    run = runs[family]
    params, tx, state, _ = _load(run, family)
    new = flat(_step(tx, params, state, nest(run.grads)))
    for p, want in run.next_params.items():
        np.testing.assert_allclose(new[p], want, rtol=1e-6, atol=1e-7, err_msg=f"{family} {p}")
        assert not np.allclose(want, run.params[p], rtol=1e-6, atol=0), "the TF step moved nothing"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sharded_on_8_devices(runs, family):
    run, spec = runs[family], FAMILIES[family]
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    params = tf2flax.init_params(run.prefix, MAPS[spec.map], nest(run.params), mesh=mesh, sharding_rules=RULES,
                                 progress=False)
    tx = spec.optimizer(run)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS[spec.map], params, jax.eval_shape(tx.init, params),
                                           mesh=mesh, sharding_rules=RULES, return_report=True, progress=False,
                                           **spec.options)
    (node,) = _find(state, spec.state)
    sharded = {p: x.sharding for p, x in flat_arrays(params).items()}
    for field, expected in _expected_slots(run, family).items():
        got = flat_arrays(getattr(node, field))
        for p, want in expected.items():
            np.testing.assert_array_equal(np.asarray(got[p]), want)
            if got[p].shape == W.SHAPES[p]:
                assert got[p].sharding.is_equivalent_to(sharded[p], len(want.shape)), (family, field, p)
            else:
                assert len(got[p].sharding.device_set) == 8
    grads = jax.device_put(nest(run.grads), jax.tree.map(lambda x: x.sharding, params))
    new = flat(jax.jit(lambda p, s, g: _step(tx, p, s, g))(params, state, grads))
    for p, want in run.next_params.items():
        np.testing.assert_allclose(new[p], want, rtol=1e-6, atol=1e-7, err_msg=f"{family} {p}")
    assert report.stats.tensors > 0 and report.stats.full_reads == 0   # every slot read region by region


def flat_arrays(tree: dict) -> dict[str, jax.Array]:
    return {f"{layer}/{leaf}": v for layer, leaves in tree["params"].items() for leaf, v in leaves.items()}


def test_transposed_kernel_gets_transposed_moments(runs):
    run = runs["tf1_adam"]
    params = nest({**run.params, "d1/kernel": run.params["d1/kernel"].T})
    state = tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params),
                                   transforms={"params/d1/kernel": "transpose"}, progress=False)
    (node,) = _find(state, optax.ScaleByAdamState)
    np.testing.assert_array_equal(flat(node.mu)["d1/kernel"], run.slots["d1/kernel/Adam"].T)
    np.testing.assert_array_equal(flat(node.nu)["d1/kernel"], run.slots["d1/kernel/Adam_1"].T)


def test_wrappers_chain_inject_hyperparams_multisteps(runs):
    run = runs["tf1_adam"]
    params = nest(run.params)
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=W.LR, b1=B1, b2=B2)
    tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), inner), every_k_schedule=2)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, tx.init(params),
                                           return_report=True, progress=False)
    (node,) = _find(state, optax.ScaleByAdamState)
    np.testing.assert_array_equal(flat(node.mu)["d2/kernel"], run.slots["d2/kernel/Adam"])
    assert int(node.count) == run.step
    assert int(state.gradient_step) == run.step
    (hyper,) = _find(state, optax.InjectStatefulHyperparamsState)
    assert int(hyper.count) == run.step
    assert report.count_source.startswith("beta1_power")   # b1 found in inject_hyperparams


@pytest.mark.parametrize("family", ["tf1_adam", "keras3"])
def test_epsilon_hat_as_an_inject_hyperparams_schedule(runs, family):
    """The docs' recipe: eps = eps_tf / sqrt(1 - b2^(count + 1)) follows TF's epsilon hat at every step."""
    run = runs[family]
    params = nest(run.params)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=W.LR, b1=B1, b2=B2,
                                              eps=lambda count: 1e-7 / jnp.sqrt(1 - B2 ** (count + 1)))
    state = tf2flax.init_opt_state(run.prefix, MAPS[FAMILIES[family].map], params, tx.init(params), progress=False)
    new = flat(_step(tx, params, state, nest(run.grads)))
    for p, want in run.next_params.items():
        np.testing.assert_allclose(new[p], want, rtol=1e-6, atol=1e-7, err_msg=f"{family} {p}")


def test_count_from_beta1_power_needs_b1(runs):
    run = runs["tf2_slots"]                                  # no step counter: only beta1_power
    params = nest(run.params)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params),
                                           return_report=True, progress=False)
    assert report.count is None and any(u.endswith("/count") or u == "0/count" for u in report.unset)
    with pytest.raises(MappingError, match="strict"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params), strict=True,
                               progress=False)
    state = tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params), count=11,
                                   progress=False)
    assert int(_find(state, optax.ScaleByAdamState)[0].count) == 11


def test_report_unused_slots_and_unset_leaves(runs):
    run = runs["tf1_adam"]
    params = nest(run.params)
    params["params"]["extra"] = {"w": jnp.zeros((2,))}
    tx = optax.adam(W.LR)
    state, report = tf2flax.init_opt_state(run.prefix, {"d1/": "params/d1/"}, params, tx.init(params),
                                           return_report=True, progress=False)
    assert report.unused == ["d2/bias/Adam", "d2/bias/Adam_1", "d2/kernel/Adam", "d2/kernel/Adam_1"]
    assert "0/mu/params/extra/w" in report.unset and "0/nu/params/d2/kernel" in report.unset
    assert report.params["params/d1/kernel"] == {"0/mu/params/d1/kernel": "d1/kernel/Adam",
                                                 "0/nu/params/d1/kernel": "d1/kernel/Adam_1"}
    np.testing.assert_array_equal(flat(state[0].mu)["d2/kernel"], 0)
    with pytest.raises(MappingError, match="unused: d2/bias/Adam"):
        tf2flax.init_opt_state(run.prefix, {"d1/": "params/d1/"}, params, tx.init(params), strict=True,
                               progress=False)


def test_adafactor_checkpoint_into_adam_state_is_an_error(runs):
    run = runs["mtf_adafactor"]
    params = nest(run.params)
    with pytest.raises(MappingError, match=r"Mesh-TF Adafactor.*ScaleByAdamState.*optax.adafactor"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params), progress=False)
    with pytest.raises(MappingError, match=r"TF1 AdamOptimizer.*FactoredState"):
        tf2flax.init_opt_state(runs["tf1_adam"].prefix, MAPS["tf1"], params,
                               optax.adafactor(W.LR).init(params), progress=False)


def test_factored_vs_unfactored_is_an_error(runs):
    run = runs["mtf_adafactor"]
    params = nest(run.params)
    with pytest.raises(MappingError, match=r"d1/kernel.*factored \(v_row/v_col\) but the optax state's is "
                                           r"unfactored"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adafactor(W.LR).init(params), progress=False)


def test_missing_slot_for_a_mapped_parameter_is_an_error(runs):
    run = runs["tf1_adam"]
    params = nest({**run.params})
    params["params"]["power"] = {"b1": jnp.zeros(())}
    mapping = {**MAPS["tf1"], "beta1_power": "params/power/b1"}
    with pytest.raises(MappingError, match=r"'params/power/b1' is loaded from 'beta1_power', which has no 'mu' "
                                           r"slot"):
        tf2flax.init_opt_state(run.prefix, mapping, params, optax.adam(W.LR).init(params), progress=False)


def test_import_is_lazy_and_exported():
    assert tf2flax.init_opt_state is tf2flax.optimizer.init_opt_state
    assert "init_opt_state" in tf2flax.__all__


T5 = Path(__file__).resolve().parent / "data" / "realworld" / "t5x_mtf_tiny_t5"


def test_real_t5_adafactor_slots_dry_run():
    """The real Mesh-TF T5 checkpoint (its slot data is not shipped: a dry run). With T5X's names,
    optax.adafactor's defaults keep a full ``v`` for every parameter, as Mesh-TF did: each ``v`` comes
    from the ``_slot_v`` T5X's importer puts there."""
    expected = json.loads((T5 / "t5x_importer_expected.json").read_text())
    params = {"target": {}}
    mapping = []
    for path, info in expected["params_only"].items():
        node = params["target"]
        *scopes, leaf = path.split("/")
        for scope in scopes:
            node = node.setdefault(scope, {})
        node[leaf] = jax.ShapeDtypeStruct(tuple(info["shape"]), jnp.dtype(info["dtype"]))
        mapping.append((info["tf_name"], f"target/{path}"))
    state = jax.eval_shape(optax.adafactor(1e-3).init, params)
    report = tf2flax.init_opt_state(T5 / "model.ckpt-0", mapping, params, state, dry_run=True, strict=True,
                                    progress=False)
    assert report.family == "mtf_adafactor" and report.count == 0 and report.count_source == "global_step"
    want = {f"0/v/target/{k[len('state/param_states/'):-len('/v')]}": v["tf_name"]
            for k, v in expected["full_state"].items() if k.endswith("/v") and v.get("tf_name")}
    got = {leaf: slot for slots in report.params.values() for leaf, slot in slots.items()}
    assert got == want and len(got) == 52
    with pytest.raises(MappingError, match=r"factored \(v_row/v_col\) but the optax state's is unfactored|"
                                           r"unfactored \(full v\) but the optax state's is factored"):
        small = jax.eval_shape(optax.adafactor(1e-3, min_dim_size_to_factor=32).init, params)
        tf2flax.init_opt_state(T5 / "model.ckpt-0", mapping, params, small, dry_run=True, progress=False)


def test_stacked_layers_and_partitioned_variable_slots(tmp_path):
    """Slots follow ``{i}`` stacking and a partitioned (sliced) variable, sharded on 8 devices."""
    run = W.tf1_adam_layers(tmp_path)
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    params = {"params": {"layers": {"kernel": jnp.zeros((2, 4, 4))}, "emb": jnp.zeros((8, 4))}}
    mapping = {"layer_{i}/": "params/layers/", "emb": "params/emb"}
    rules = [(r"layers/kernel$", P(None, None, "model")), (r"emb$", P("data", "model"))]
    params = tf2flax.init_params(run.prefix, mapping, params, mesh=mesh, sharding_rules=rules, progress=False)
    tx = optax.adam(W.LR)
    state, report = tf2flax.init_opt_state(run.prefix, mapping, params, jax.eval_shape(tx.init, params), mesh=mesh,
                                           sharding_rules=rules, return_report=True, strict=True, progress=False)
    node = state[0]
    np.testing.assert_array_equal(node.mu["params"]["layers"]["kernel"],
                                  np.stack([run.slots["layer_0/kernel/m"], run.slots["layer_1/kernel/m"]]))
    np.testing.assert_array_equal(node.nu["params"]["layers"]["kernel"],
                                  np.stack([run.slots["layer_0/kernel/v"], run.slots["layer_1/kernel/v"]]))
    np.testing.assert_array_equal(node.mu["params"]["emb"], run.slots["emb/m"])
    assert node.mu["params"]["emb"].sharding.is_equivalent_to(params["params"]["emb"].sharding, 2)
    layers = params["params"]["layers"]["kernel"]
    assert node.nu["params"]["layers"]["kernel"].sharding.is_equivalent_to(layers.sharding, 3)
    assert int(node.count) == run.step
    assert report.params["params/layers/kernel"]["0/mu/params/layers/kernel"].startswith(
        "stack[axis=0](layer_0/kernel/Adam")


def test_shipped_bert_checkpoint_partitioned_table_slots_per_part():
    """examples/bert_tiny (BERT's AdamWeightDecay, 3 steps): the word table is saved whole (two slices),
    its slots per part (``.../word_embeddings/part_0/adam_m``); sharded by rows, each device's moments
    come from the parts it overlaps."""
    prefix = Path(__file__).resolve().parent.parent / "examples" / "bert_tiny"
    with tf2flax.open_checkpoint(prefix) as ckpt:
        names = [n for n in ckpt.names if not re.search(r"/adam_[mv]$|^global_step$", n)]
        params = {"params": {}}
        for n in names:
            node = params["params"]
            *scopes, leaf = n.split("/")
            for scope in scopes:
                node = node.setdefault(scope, {})
            node[leaf] = jax.ShapeDtypeStruct(ckpt.shape(n), ckpt.dtype(n))
        table = np.concatenate([ckpt.read(f"bert/embeddings/word_embeddings/part_{i}/adam_v") for i in (0, 1)])
        pooler_m = ckpt.read("bert/pooler/dense/kernel/adam_m")
    mesh = jax.make_mesh((8,), ("rows",))
    rules = [(r"word_embeddings$", P("rows", None))]
    mapping = {"bert/": "params/bert/", "cls/": "params/cls/"}
    params = tf2flax.init_params(prefix, mapping, params, mesh=mesh, sharding_rules=rules, progress=False)
    tx = optax.adamw(1e-3)
    state, report = tf2flax.init_opt_state(prefix, mapping, params, jax.eval_shape(tx.init, params), mesh=mesh,
                                           sharding_rules=rules, strict=True, return_report=True, progress=False)
    nu = state[0].nu["params"]["bert"]["embeddings"]["word_embeddings"]
    np.testing.assert_array_equal(nu, table)
    assert nu.sharding.is_equivalent_to(params["params"]["bert"]["embeddings"]["word_embeddings"].sharding, 2)
    np.testing.assert_array_equal(state[0].mu["params"]["bert"]["pooler"]["dense"]["kernel"], pooler_m)
    assert report.family == "bert_adam" and report.count == 3 and int(state[0].count) == 3
    table_slots = "bert/embeddings/word_embeddings/part_0/adam_v, bert/embeddings/word_embeddings/part_1/adam_v"
    assert report.params["params/bert/embeddings/word_embeddings"]["0/nu/params/bert/embeddings/word_embeddings"] \
        == f"concat[axis=0]({table_slots})"


def test_nnx_optimizer_state(runs):
    """An ``nnx.Optimizer``'s state: ``optimizer.opt_state = init_opt_state(..., model, optimizer.opt_state)``;
    then one ``optimizer.update`` lands where one more TF step did."""
    from flax import nnx

    from tf2flax.targets import unflatten_targets

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.d1, self.d2 = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)

    run = runs["tf1_adam"]
    model = Model(nnx.Rngs(0))
    mapping = {"d1/": "d1/", "d2/": "d2/"}
    tf2flax.init_params(run.prefix, mapping, model, strict=True, progress=False)
    optimizer = nnx.Optimizer(model, optax.adam(W.LR, B1, B2, eps_hat(1e-7, run.step)), wrt=nnx.Param)
    optimizer.opt_state = tf2flax.init_opt_state(run.prefix, mapping, model, optimizer.opt_state, strict=True,
                                                 progress=False)
    np.testing.assert_array_equal(optimizer.opt_state[0].nu["d2"]["kernel"][...], run.slots["d2/kernel/Adam_1"])
    grads = unflatten_targets(nnx.state(model, nnx.Param), {k: jnp.asarray(v) for k, v in run.grads.items()})
    optimizer.update(model, grads)
    for name, want in run.next_params.items():
        layer, leaf = name.split("/")
        np.testing.assert_allclose(getattr(getattr(model, layer), leaf)[...], want, rtol=1e-6, atol=1e-7)


def test_clear_errors_for_states_and_checkpoints_that_do_not_fit(runs, tf1_ckpt):
    run = runs["tf1_adam"]
    params = nest(run.params)
    with pytest.raises(MappingError, match=r"holds no ScaleByAdamState, TraceState or FactoredState"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.sgd(W.LR).init(params), progress=False)
    with pytest.raises(MappingError, match=r"TF1 AdamOptimizer.*TraceState \(sgd with momentum\).*optax.adam"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.sgd(W.LR, 0.9).init(params), progress=False)
    with pytest.raises(MappingError, match=r"has no Keras 3 optimizer .* slots \(families found: tf1_adam\)"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params), family="keras3",
                               progress=False)
    with pytest.raises(MappingError, match=r"unknown optimizer slot family 'lamb'"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, optax.adam(W.LR).init(params), family="lamb",
                               progress=False)
    with pytest.raises(MappingError, match=r"holds no optimizer slots of a known family"):
        tf2flax.init_opt_state(tf1_ckpt.prefix, None, {}, optax.adam(W.LR).init({}), progress=False)
    bad = jax.tree.map(lambda x: jnp.zeros((x.shape[0] + 1,) + x.shape[1:]), params)
    state = optax.adam(W.LR).init(bad)
    with pytest.raises(MappingError, match=r"state leaf '0/mu/params/d1/kernel' has shape \[4, 4\], but the slot "
                                           r"'d1/kernel/Adam' of parameter 'params/d1/kernel' gives \[3, 4\]"):
        tf2flax.init_opt_state(run.prefix, MAPS["tf1"], params, state, progress=False)


def test_two_processes_each_read_half_of_the_moments(tmp_path):
    """Real multi-process JAX (jax.distributed on 127.0.0.1): 2 processes x 4 CPU devices, a (4, 2) mesh;
    each process reads only its half of each moment."""
    prefix = W.tf1_adam_wide(tmp_path)
    worker = Path(__file__).with_name("opt_state_worker.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), prefix, str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    moments = 2 * 64 * 16 * 4
    for i in range(2):
        read = int((tmp_path / f"bytes_read_{i}").read_text())
        assert read == moments // 2, (i, read, moments)

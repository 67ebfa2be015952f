"""``init_opt_state``: TensorFlow optimizer slots into optax states, judged by TensorFlow itself.

For each slot family a tiny model is trained a few steps in TF (``opt_writers``). The loaded state's
moments must equal TF's slots bit for bit, its count TF's step; one optax step from the loaded
params and state must land where one more TF step did (1e-6 relative), also sharded on 8 devices.
Keras 2 (``tf_keras``) is not installed here (it needs the ``tensorflow`` package, not
``tensorflow-cpu``); its OptimizerV2 layout (object-graph ``slot_variables``) is tested through TF's
own ``tf.compat.v1`` optimizer under eager, which saves slots the same way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

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


# family: (writer, map, optax optimizer for the next step given the run, init_opt_state kwargs, slot names)
FAMILIES = {
    "tf1_adam": (lambda d: W.tf1_adam(d, B1, B2), "tf1", lambda r: optax.adam(W.LR, B1, B2, eps_hat(1e-7, r.step)), {},
                 {"mu": "{}/Adam", "nu": "{}/Adam_1"}),
    "bert_adam": (lambda d: W.bert_adam(d, b1=B1, b2=B2), "tf1", lambda r: bert_adamw(W.LR, 0.01), {}, {"mu": "{}/adam_m", "nu": "{}/adam_v"}),
    "tf1_momentum": (W.tf1_momentum, "tf1", lambda r: optax.sgd(W.LR, momentum=0.9), {}, {"trace": "{}/Momentum"}),
    "tf2_slots": (lambda d: W.eager_v1_adam(d, B1, B2), "tf1", lambda r: optax.adam(W.LR, B1, B2, eps_hat(1e-7, r.step)), {"b1": B1},
                  {"mu": "{}/m", "nu": "{}/v"}),
    "keras3": (lambda d: W.keras3_adam(d, B1, B2), "keras3", lambda r: optax.adam(W.LR, B1, B2, eps_hat(1e-7, r.step)), {},
               {"mu": "{}/m", "nu": "{}/v"}),
    "keras3_sgd": (W.keras3_sgd, "keras3", lambda r: optax.sgd(W.LR, momentum=0.9), {}, {"trace": "{}/m"}),
    "mtf_adafactor": (W.mtf_adafactor, "tf1", lambda r: optax.adafactor(W.LR, min_dim_size_to_factor=3), {}, None),
}


KINDS = {"tf1_momentum": optax.TraceState, "keras3_sgd": optax.TraceState, "mtf_adafactor": optax.FactoredState}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, W.TrainedRun]:
    return {name: spec[0](tmp_path_factory.mktemp(name)) for name, spec in FAMILIES.items()}


def _find(state, kind):
    return [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(s, kind)]


def _load(run, family, **options):
    _, map_name, make_tx, kwargs, _ = FAMILIES[family]
    params = nest(run.params)
    tx = make_tx(run)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS[map_name], params, tx.init(params),
                                           return_report=True, progress=False, **{**kwargs, **options})
    return params, tx, state, report


def _expected_slots(run, family) -> dict[str, dict[str, np.ndarray]]:
    """{field: {param name: TF's slot}} for the state's slot fields."""
    names = FAMILIES[family][4]
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
    assert report.family == {"keras3_sgd": "keras3"}.get(family, family)
    kind = KINDS.get(family, optax.ScaleByAdamState)
    (node,) = _find(state, kind)
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
    run = runs[family]
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    params = tf2flax.init_params(run.prefix, MAPS[FAMILIES[family][1]], nest(run.params), mesh=mesh,
                                 sharding_rules=RULES, progress=False)
    tx = FAMILIES[family][2](run)
    state, report = tf2flax.init_opt_state(run.prefix, MAPS[FAMILIES[family][1]], params,
                                           jax.eval_shape(tx.init, params), mesh=mesh, sharding_rules=RULES, return_report=True, progress=False,
                                           **FAMILIES[family][3])
    kind = KINDS.get(family, optax.ScaleByAdamState)
    (node,) = _find(state, kind)
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
    assert report.stats.tensors > 0


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

"""Train tiny models a few steps with real TensorFlow optimizers and save them with their slots.

Every run returns a :class:`TrainedRun`: the checkpoint prefix, TensorFlow's parameters and slots as
saved, its step, the gradient at the saved parameters, and the parameters after one more TF step
with that gradient. The model is two dense layers, ``d1`` (3 -> 4) and ``d2`` (4 -> 4), on fixed data.

The BERT and Adafactor optimizers are small TF implementations written here, as
google-research/bert's ``optimization.py`` (``AdamWeightDecayOptimizer``) and Mesh-TF's
``AdafactorOptimizer`` define them, with their slot names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from tf_writers import tf

SHAPES = {"d1/kernel": (3, 4), "d1/bias": (4,), "d2/kernel": (4, 4), "d2/bias": (4,)}
STEPS = 3
LR = 0.01


@dataclasses.dataclass
class TrainedRun:
    """What TensorFlow saved and did next (arrays by TF variable name ``d1/kernel`` ...)."""

    prefix: str
    params: dict[str, np.ndarray]
    slots: dict[str, np.ndarray]
    step: int
    grads: dict[str, np.ndarray]
    next_params: dict[str, np.ndarray]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)


def _init(name: str) -> np.ndarray:
    rng = np.random.default_rng(sum(name.encode()))
    return (rng.standard_normal(SHAPES[name]) * 0.5).astype(np.float32)


def _loss(T, v: dict) -> "tf.Tensor":
    x, y = _data()
    h = T.matmul(x, v["d1/kernel"]) + v["d1/bias"]
    out = T.matmul(h, v["d2/kernel"]) + v["d2/bias"]
    return T.reduce_mean(T.square(out - y))


def _graph_run(directory: Path, make_train: Callable, slot_names: Callable[[], list[str]]) -> TrainedRun:
    """Train in a TF1 graph; ``make_train(loss, variables, global_step) -> train_op``."""
    T = tf()
    graph = T.Graph()
    with graph.as_default():
        v = {}
        for name in SHAPES:
            scope, leaf = name.split("/")
            with T.compat.v1.variable_scope(scope):
                v[name] = T.compat.v1.get_variable(leaf, initializer=_init(name))
        gs = T.compat.v1.train.get_or_create_global_step()
        loss = _loss(T, v)
        train = make_train(loss, v, gs)
        grads = dict(zip(v, T.gradients(loss, list(v.values()))))
        saver = T.compat.v1.train.Saver()
        with T.compat.v1.Session(graph=graph) as sess:
            sess.run(T.compat.v1.global_variables_initializer())
            for _ in range(STEPS):
                sess.run(train)
            prefix = saver.save(sess, str(directory / "model.ckpt"))
            names = slot_names()
            all_vars = {x.op.name: x for x in T.compat.v1.global_variables()}
            slots = sess.run({n: all_vars[n] for n in names})
            params, step, g = sess.run([v, gs, grads])
            sess.run(train)
            nxt = sess.run(v)
    return TrainedRun(prefix, params, slots, int(step), g, nxt)


def tf1_adam(directory: Path, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> TrainedRun:
    T = tf()
    def make(loss, v, gs):
        return T.compat.v1.train.AdamOptimizer(LR, b1, b2, eps).minimize(loss, global_step=gs)
    names = lambda: [f"{n}/Adam{s}" for n in SHAPES for s in ("", "_1")] + ["beta1_power", "beta2_power"]  # noqa: E731
    return _graph_run(directory, make, names)


def tf1_momentum(directory: Path, momentum: float = 0.9) -> TrainedRun:
    T = tf()
    def make(loss, v, gs):
        return T.compat.v1.train.MomentumOptimizer(LR, momentum).minimize(loss, global_step=gs)
    return _graph_run(directory, make, lambda: [f"{n}/Momentum" for n in SHAPES])


def bert_adam(directory: Path, wd: float = 0.01, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> TrainedRun:
    """BERT's ``AdamWeightDecayOptimizer``: no bias correction, decoupled decay, biases excluded."""
    T = tf()

    def make(loss, v, gs):
        ops = []
        for (name, var), grad in zip(v.items(), T.gradients(loss, list(v.values()))):
            m = T.compat.v1.get_variable(name + "/adam_m", shape=var.shape, trainable=False,
                                         initializer=T.compat.v1.zeros_initializer())
            s = T.compat.v1.get_variable(name + "/adam_v", shape=var.shape, trainable=False,
                                         initializer=T.compat.v1.zeros_initializer())
            next_m = b1 * m + (1.0 - b1) * grad
            next_v = b2 * s + (1.0 - b2) * T.square(grad)
            update = next_m / (T.sqrt(next_v) + eps)
            if not name.endswith("bias"):
                update += wd * var
            ops += [var.assign(var - LR * update), m.assign(next_m), s.assign(next_v)]
        with T.control_dependencies(ops):
            return gs.assign(gs + 1)
    return _graph_run(directory, make, lambda: [f"{n}/adam_{s}" for n in SHAPES for s in "mv"])


def _mtf_factored_dims(shape: tuple[int, ...], min_dim: int) -> tuple[int, int] | None:
    """Mesh-TF's choice: the two largest axes, largest first (ties: the earlier axis)."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda a: -shape[a])
    return (order[0], order[1]) if shape[order[1]] >= min_dim else None


def mtf_adafactor(directory: Path, min_dim: int = 3, clip: float = 1.0, eps1: float = 1e-30,
                  eps2: float = 1e-3) -> TrainedRun:
    """Mesh-TF's ``AdafactorOptimizer`` (decay 1 - (step+1)^-0.8, parameter scale, clipping), slots named
    ``<var>_slot_vr`` / ``_slot_vc`` (factored) or ``<var>_slot_v``."""
    T = tf()
    rms = lambda x: T.sqrt(T.reduce_mean(T.square(x)))  # noqa: E731
    names = []

    def make(loss, v, gs):
        step = T.cast(gs, T.float32)
        decay = 1.0 - T.pow(step + 1.0, -0.8)
        ops = []
        for (name, var), grad in zip(v.items(), T.gradients(loss, list(v.values()))):
            shape = tuple(var.shape.as_list())
            dims = _mtf_factored_dims(shape, min_dim)
            g2 = T.square(grad) + eps1
            zeros = T.compat.v1.zeros_initializer()
            if dims:
                d0, d1 = dims
                vr = T.compat.v1.get_variable(name + "_slot_vr", [d for i, d in enumerate(shape) if i != d0],
                                              initializer=zeros, trainable=False)
                vc = T.compat.v1.get_variable(name + "_slot_vc", [d for i, d in enumerate(shape) if i != d1],
                                              initializer=zeros, trainable=False)
                names.extend([name + "_slot_vr", name + "_slot_vc"])
                new_vr = vr * decay + T.reduce_mean(g2, axis=d0) * (1.0 - decay)
                new_vc = vc * decay + T.reduce_mean(g2, axis=d1) * (1.0 - decay)
                ops += [vr.assign(new_vr), vc.assign(new_vc)]
                d1_in_vr = d1 - 1 if d1 > d0 else d1
                long_term = T.reduce_mean(new_vr, axis=d1_in_vr, keepdims=True)
                x = grad * T.expand_dims(T.math.rsqrt(new_vr / long_term), d0) * T.expand_dims(T.math.rsqrt(new_vc), d1)
            else:
                s = T.compat.v1.get_variable(name + "_slot_v", shape, initializer=zeros, trainable=False)
                names.append(name + "_slot_v")
                new_v = s * decay + g2 * (1.0 - decay)
                ops.append(s.assign(new_v))
                x = grad * T.math.rsqrt(new_v)
            x = x / T.maximum(1.0, rms(x) / clip)
            ops.append(var.assign_sub(x * T.maximum(rms(var), eps2) * LR))
        with T.control_dependencies(ops):
            return gs.assign(gs + 1)
    return _graph_run(directory, make, lambda: names)


def eager_v1_adam(directory: Path, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> TrainedRun:
    """``tf.compat.v1.train.AdamOptimizer`` under eager, saved with ``tf.train.Checkpoint``: the object
    graph's ``slot_variables`` (``m``, ``v``) and ``optimizer/beta1_power``, as tf.keras OptimizerV2 saves."""
    T = tf()
    v = {n: T.Variable(_init(n), name=n) for n in SHAPES}
    opt = T.compat.v1.train.AdamOptimizer(LR, b1, b2, eps)

    def step() -> dict:
        with T.GradientTape() as tape:
            loss = _loss(T, v)
        g = dict(zip(v, tape.gradient(loss, list(v.values()))))
        opt.apply_gradients([(g[n], v[n]) for n in v])
        return g

    for _ in range(STEPS):
        step()
    ckpt = T.train.Checkpoint(optimizer=opt, **{n.replace("/", "_"): x for n, x in v.items()})
    prefix = ckpt.write(str(directory / "ckpt"))
    params = {n: x.numpy() for n, x in v.items()}
    slots = {f"{n}/{s}": opt.get_slot(v[n], s).numpy() for n in v for s in ("m", "v")}
    g = step()
    return TrainedRun(prefix, params, slots, STEPS, {n: x.numpy() for n, x in g.items()},
                      {n: x.numpy() for n, x in v.items()})


def keras3_adam(directory: Path, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> TrainedRun:
    """A Keras 3 model trained with ``keras.optimizers.Adam``; slots ``<opt>/<var>_momentum``/``_velocity``."""
    import keras

    return _keras3(directory, keras.optimizers.Adam(LR, beta_1=b1, beta_2=b2, epsilon=eps))


def keras3_sgd(directory: Path, momentum: float = 0.9) -> TrainedRun:
    """A Keras 3 model trained with ``keras.optimizers.SGD(momentum=...)``; slots ``<opt>/<var>_momentum``
    (slots ``m``: Keras's velocity, ``-lr`` x optax's trace)."""
    import keras

    return _keras3(directory, keras.optimizers.SGD(LR, momentum=momentum))


def _keras3(directory: Path, opt) -> TrainedRun:
    T = tf()
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"), keras.layers.Dense(4, name="d2")],
                             name="seq")
    for layer in model.layers:
        layer.kernel.assign(_init(f"{layer.name}/kernel"))
        layer.bias.assign(_init(f"{layer.name}/bias"))
    by_name = {f"{layer.name}/{w}": getattr(layer, w) for layer in model.layers for w in ("kernel", "bias")}

    def step() -> dict:
        with T.GradientTape() as tape:
            loss = _loss(T, {n: x.value for n, x in by_name.items()})
        g = dict(zip(by_name, tape.gradient(loss, [x.value for x in by_name.values()])))
        opt.apply_gradients([(g[n], by_name[n]) for n in by_name])
        return g

    for _ in range(STEPS):
        step()
    prefix = T.train.Checkpoint(model=model, optimizer=opt).write(str(directory / "ckpt"))
    slots = {}
    for n, var in by_name.items():
        i = opt._get_variable_index(var)
        slots[f"{n}/m"] = (opt._momentums if hasattr(opt, "_momentums") else opt.momentums)[i].numpy()
        if hasattr(opt, "_velocities"):
            slots[f"{n}/v"] = opt._velocities[i].numpy()
    params = {n: np.asarray(x.numpy()) for n, x in by_name.items()}
    g = step()
    return TrainedRun(prefix, params, slots, STEPS, {n: np.asarray(x) for n, x in g.items()},
                      {n: np.asarray(x.numpy()) for n, x in by_name.items()})


def tf1_adam_layers(directory: Path) -> TrainedRun:
    """TF1 Adam on two same-shape layers (``layer_0/kernel``, ``layer_1/kernel``: for ``{i}`` stacking)
    and a partitioned variable ``emb`` [8, 4] in 2 parts (saved, with its slots, as sliced tensors)."""
    T = tf()
    graph = T.Graph()
    with graph.as_default():
        rng = np.random.default_rng(5)
        v = {}
        for name in ("layer_0/kernel", "layer_1/kernel"):
            with T.compat.v1.variable_scope(name.split("/")[0]):
                v[name] = T.compat.v1.get_variable("kernel", initializer=rng.standard_normal((4, 4)).astype(np.float32))
        emb = T.compat.v1.get_variable("emb", shape=(8, 4), initializer=T.compat.v1.random_normal_initializer(seed=1),
                                       partitioner=T.compat.v1.fixed_size_partitioner(2))
        x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
        loss = T.reduce_mean(T.square(T.matmul(T.matmul(x, v["layer_0/kernel"]), v["layer_1/kernel"]) - y)) \
            + T.reduce_mean(T.square(T.convert_to_tensor(emb) - x))
        opt = T.compat.v1.train.AdamOptimizer(LR)
        train = opt.minimize(loss, global_step=T.compat.v1.train.get_or_create_global_step())
        with T.compat.v1.Session(graph=graph) as sess:
            sess.run(T.compat.v1.global_variables_initializer())
            for _ in range(STEPS):
                sess.run(train)
            prefix = T.compat.v1.train.Saver().save(sess, str(directory / "model.ckpt"))
            slots = sess.run({f"{n}/{s}": opt.get_slot(x, s) for n, x in v.items() for s in ("m", "v")})
            slots["emb/m"] = np.concatenate(sess.run([opt.get_slot(p, "m") for p in emb]))
            params = sess.run(v)
            params["emb"] = sess.run(T.convert_to_tensor(emb))
    return TrainedRun(prefix, params, slots, STEPS, {}, {})


def tf1_adam_wide(directory: Path) -> str:
    """TF1 Adam, 2 steps, on one [64, 16] kernel ``w`` (for the two-process test: slots big enough that
    each process's share shows in the bytes it reads)."""
    T = tf()
    graph = T.Graph()
    with graph.as_default():
        rng = np.random.default_rng(7)
        w = T.compat.v1.get_variable("w", initializer=rng.standard_normal((64, 16)).astype(np.float32))
        x = rng.standard_normal((8, 64)).astype(np.float32)
        train = T.compat.v1.train.AdamOptimizer(LR).minimize(
            T.reduce_mean(T.square(T.matmul(x, w))), global_step=T.compat.v1.train.get_or_create_global_step())
        with T.compat.v1.Session(graph=graph) as sess:
            sess.run(T.compat.v1.global_variables_initializer())
            for _ in range(2):
                sess.run(train)
            return T.compat.v1.train.Saver().save(sess, str(directory / "model.ckpt"))

"""Unit tests of the mapping engine's extensions, on an in-memory checkpoint (no TensorFlow)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mapping_fakes import FakeCheckpoint, FakeGraph, tf2_variable
from tf2flax.errors import MappingError
from tf2flax.mapping import build_plan, check_strict
from tf2flax.plan import Fn, Transpose
from tf2flax.targets import flatten_targets

RNG = np.random.default_rng(0)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def zeros(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


def plan(ckpt, mapping, params, **kw):
    return build_plan(ckpt, mapping, flatten_targets(params), **kw)


def load(ckpt, mapping, params, **kw) -> dict[str, np.ndarray]:
    return {t: e.read() for t, e in plan(ckpt, mapping, params, **kw).entries.items()}


# ---- TF2 naming ---------------------------------------------------------------------------

def keras_like() -> FakeCheckpoint:
    """A TF2 checkpoint as Keras 3 writes it with its optimizer: keys through the optimizer."""
    variables = (
        tf2_variable("optimizer/_trainable_variables/0", "sequential/dense/kernel", "model/_operations/0/_kernel"),
        tf2_variable("optimizer/_trainable_variables/1", "sequential/dense/bias", "model/_operations/0/bias"),
        tf2_variable("model/_operations/1/gamma", "sequential/bn/gamma"),
        tf2_variable("model/_operations/1/moving_mean", "sequential/bn/moving_mean"),
        tf2_variable("optimizer/_variables/1", "adam/sequential_dense_kernel_momentum", is_optimizer=True),
        tf2_variable("save_counter", "save_counter"),
    )
    shapes = {0: (4, 8), 1: (8,), 2: (8,), 3: (8,), 4: (4, 8), 5: ()}
    tensors = {v.key: rand(*shapes[i]) for i, v in enumerate(variables)}
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(b"graph", dtype=object)
    return FakeCheckpoint(tensors, FakeGraph(variables))


def test_tf2_names_key_object_path_model_path_full_name() -> None:
    ckpt = keras_like()
    kernel = ckpt.tensors["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    for name in ["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE", "optimizer/_trainable_variables/0",
                 "model/_operations/0/_kernel", "sequential/dense/kernel"]:
        values = load(ckpt, {name: "k"}, {"k": zeros(4, 8)})
        np.testing.assert_array_equal(values["k"], kernel)


def test_tf2_full_name_scope_and_report_skips_optimizer_state() -> None:
    ckpt = keras_like()
    params = {"params": {"Dense_0": {"kernel": zeros(4, 8), "bias": zeros(8)}}}
    p = plan(ckpt, {"sequential/dense/": "params/Dense_0/"}, params)
    assert p.report.matched["params/Dense_0/kernel"] == "sequential/dense/kernel"
    assert p.report.unused == ["sequential/bn/gamma", "sequential/bn/moving_mean"]
    assert "adam/sequential_dense_kernel_momentum" in p.report.skipped
    assert "save_counter" in p.report.skipped and "_CHECKPOINTABLE_OBJECT_GRAPH" in p.report.skipped


def test_ambiguous_full_name_is_an_error_listing_keys() -> None:
    variables = (tf2_variable("a/x", "dup/w"), tf2_variable("b/x", "dup/w"))
    ckpt = FakeCheckpoint({v.key: rand(2) for v in variables}, FakeGraph(variables))
    with pytest.raises(MappingError, match=r"'dup/w' is ambiguous.*a/x/\.ATTRIBUTES"):
        plan(ckpt, {"dup/w": "w"}, {"w": zeros(2)})
    assert load(ckpt, {"a/x": "w"}, {"w": zeros(2)})["w"].shape == (2,)


# ---- checkpoint-side parts ------------------------------------------------------------------

def test_checkpoint_parts_concatenate_along_the_axis_that_differs() -> None:
    parts = [rand(3, 2), rand(3, 5), rand(3, 1)]
    ckpt = FakeCheckpoint({f"emb/part_{i}": p for i, p in enumerate(parts)})
    values = load(ckpt, {"emb": "e"}, {"e": zeros(3, 8)})
    np.testing.assert_array_equal(values["e"], np.concatenate(parts, axis=1))


def test_checkpoint_parts_of_equal_shape_use_axis_0_or_part_axis() -> None:
    parts = [rand(2, 2), rand(2, 2)]
    ckpt = FakeCheckpoint({"w/part_0": parts[0], "w/part_1": parts[1]})
    np.testing.assert_array_equal(load(ckpt, None, {"w": zeros(4, 2)})["w"], np.concatenate(parts, 0))
    np.testing.assert_array_equal(load(ckpt, None, {"w": zeros(2, 4)}, part_axis=1)["w"], np.concatenate(parts, 1))
    np.testing.assert_array_equal(load(ckpt, None, {"w": zeros(2, 4)}, part_axis={"w": 1})["w"],
                                  np.concatenate(parts, 1))


def test_checkpoint_parts_that_do_not_join_are_an_error_when_used() -> None:
    ckpt = FakeCheckpoint({"w/part_0": rand(2, 3), "w/part_1": rand(3, 2), "x/part_1": rand(2)})
    with pytest.raises(MappingError, match="differ in more than one axis"):
        plan(ckpt, {"w": "w"}, {"w": zeros(5, 5)})
    with pytest.raises(MappingError, match="has no tensor 'x'"):  # part_0 missing: no concatenation
        plan(ckpt, {"x": "x"}, {"x": zeros(2)})


def test_checkpoint_parts_into_target_parts_with_a_different_count() -> None:
    full = rand(10, 4)
    ckpt = FakeCheckpoint({"v/part_0": full[:5], "v/part_1": full[5:]})
    params = {"v": {"part_0": zeros(4, 4), "part_1": zeros(3, 4), "part_2": zeros(3, 4)}}
    values = load(ckpt, None, params)
    np.testing.assert_array_equal(np.concatenate([values[f"v/part_{i}"] for i in range(3)]), full)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data())
def test_any_saved_parts_into_any_target_parts(shape: list[int], data: st.DataObject) -> None:
    axis = data.draw(st.integers(0, len(shape) - 1))
    saved = data.draw(st.integers(1, shape[axis]))
    wanted = data.draw(st.integers(1, shape[axis]))
    full = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    saved_parts = np.array_split(full, saved, axis)
    ckpt = FakeCheckpoint({f"w/part_{i}": p for i, p in enumerate(saved_parts)} if saved > 1 else {"w": full})
    pieces = np.array_split(full, wanted, axis)
    params = {"v": {f"part_{i}": zeros(*p.shape) for i, p in enumerate(pieces)}}
    values = load(ckpt, {"w": "v"}, params, part_axis=axis)
    for i, p in enumerate(pieces):
        np.testing.assert_array_equal(values[f"v/part_{i}"], p)


# ---- explicit partition lists ----------------------------------------------------------------

def test_list_of_plain_leaves_splits_a_fused_tensor() -> None:
    qkv = rand(4, 12)
    ckpt = FakeCheckpoint({"attn/qkv": qkv})
    params = {"q": zeros(4, 4), "k": zeros(4, 4), "v": zeros(4, 4)}
    values = load(ckpt, {"attn/qkv": ["q", "k", "v"]}, params)
    for i, name in enumerate("qkv"):
        np.testing.assert_array_equal(values[name], qkv[:, 4 * i: 4 * (i + 1)])


def test_list_of_plain_leaves_with_per_leaf_transpose() -> None:
    qkv = rand(12, 4)  # [3 * out, in]
    ckpt = FakeCheckpoint({"qkv": qkv})
    params = {"q": zeros(4, 4), "k": zeros(4, 4), "v": zeros(4, 4)}
    values = load(ckpt, {"qkv": ["q", "k", "v"]}, params, transforms={"[qkv]": "transpose"})
    np.testing.assert_array_equal(values["k"], qkv[4:8].T)


def test_partitioned_transforms_apply_to_the_whole_tensor_before_the_split() -> None:
    w = rand(6, 4)
    ckpt = FakeCheckpoint({"w": w})
    params = {"w": {"part_0": zeros(2, 6), "part_1": zeros(2, 6)}}
    values = load(ckpt, {"w": "w"}, params, transforms={"w": "transpose"})
    np.testing.assert_array_equal(values["w/part_1"], w.T[2:])


# ---- rules and presets ----------------------------------------------------------------------

def test_rules_first_match_wins_and_drive_loading_without_a_map() -> None:
    ckpt = FakeCheckpoint({"bert/encoder/layer_0/w": rand(2), "bert/pooler/w": rand(3), "bert/encoder/adam_m": rand(1)})
    rules = [(r"/adam_[mv]$", None), (r"^bert/encoder/layer_(\d+)", r"params/layers_\1"),
             (r"^bert/", "params/other/"), (r"^params/layers_0", "never")]
    params = {"params": {"layers_0": {"w": zeros(2)}, "other": {"pooler": {"w": zeros(3)}}}}
    p = plan(ckpt, None, params, rules=rules)
    assert sorted(p.entries) == ["params/layers_0/w", "params/other/pooler/w"]
    assert p.report.unused == [] and p.report.skipped == ["bert/encoder/adam_m"]


def test_rules_apply_before_the_assignment_map_and_accept_functions() -> None:
    ckpt = FakeCheckpoint({"Layer3/W": rand(2)})
    values = load(ckpt, {"layer3/": "params/l/"}, {"params": {"l": {"w": zeros(2)}}},
                  rules={r"^.*$": lambda m: m.group(0).lower()})
    assert "params/l/w" in values


def test_bad_rules_are_errors() -> None:
    ckpt = FakeCheckpoint({"a": rand(1)})
    with pytest.raises(MappingError, match="not a valid regular expression"):
        plan(ckpt, None, {"a": zeros(1)}, rules=[("(", "x")])
    with pytest.raises(MappingError, match="pair"):
        plan(ckpt, None, {"a": zeros(1)}, rules=["abc"])
    with pytest.raises(MappingError, match="unknown preset 'pytorch'"):
        plan(ckpt, None, {"a": zeros(1)}, preset="pytorch")


def keras_names() -> FakeCheckpoint:
    return FakeCheckpoint({
        "bn/gamma": rand(3), "bn/beta": rand(3), "bn/moving_mean": rand(3), "bn/moving_variance": rand(3),
        "emb/embeddings": rand(5, 3), "mha/attention_output/kernel": rand(2, 4, 3), "mha/query/kernel": rand(3, 2, 4),
    })


def test_keras_preset_into_linen_collections() -> None:
    ckpt = keras_names()
    variables = {
        "params": {"bn": {"scale": zeros(3), "bias": zeros(3)}, "emb": {"embedding": zeros(5, 3)},
                   "mha": {"out": {"kernel": zeros(2, 4, 3)}, "query": {"kernel": zeros(3, 2, 4)}}},
        "batch_stats": {"bn": {"mean": zeros(3), "var": zeros(3)}},
    }
    p = plan(ckpt, None, variables, preset="keras")
    assert p.report.unset == [] and p.report.unused == []
    np.testing.assert_array_equal(p.entries["batch_stats/bn/var"].read(), ckpt.tensors["bn/moving_variance"])
    np.testing.assert_array_equal(p.entries["params/mha/out/kernel"].read(), ckpt.tensors["mha/attention_output/kernel"])
    # With a map: one scope per collection (the list form maps one checkpoint scope twice).
    renamed = {"params": {"BN": variables["params"]["bn"]}, "batch_stats": {"BN": variables["batch_stats"]["bn"]}}
    p = plan(ckpt, [("bn/", "params/BN/"), ("bn/", "batch_stats/BN/")], renamed, preset="keras")
    assert sorted(p.entries) == ["batch_stats/BN/mean", "batch_stats/BN/var", "params/BN/bias", "params/BN/scale"]


def test_keras_preset_into_nnx_module() -> None:
    class M(nnx.Module):
        def __init__(self) -> None:
            self.bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
            self.emb = nnx.Embed(5, 3, rngs=nnx.Rngs(0))

    ckpt = keras_names()
    p = plan(ckpt, None, M(), preset="keras")
    assert sorted(p.entries) == ["bn/bias", "bn/mean", "bn/scale", "bn/var", "emb/embedding"]


# ---- transforms and casts ---------------------------------------------------------------------

def test_transform_specs() -> None:
    w = rand(2, 3, 4)
    ckpt = FakeCheckpoint({"w": w})
    cases = [
        ("transpose", zeros(4, 3, 2), w.T),
        (("transpose", (1, 0, 2)), zeros(3, 2, 4), w.transpose(1, 0, 2)),
        (("reshape", (6, -1)), zeros(6, 4), w.reshape(6, 4)),
        (["transpose", ("reshape", (4, 6))], zeros(4, 6), w.T.reshape(4, 6)),
        (lambda x: x[::-1] * 2, zeros(2, 3, 4), w[::-1] * 2),
        (lambda x: x.sum(axis=0), zeros(3, 4), w.sum(axis=0)),           # traces: shape known
        (lambda x: np.flip(x, 1), zeros(2, 3, 4), np.flip(w, 1)),         # numpy-only: shape kept
        (Transpose((2, 1, 0)), zeros(4, 3, 2), w.T),
        (("cast", "float16"), zeros(2, 3, 4), w.astype(np.float16).astype(np.float32)),
    ]
    for spec, target, want in cases:
        values = load(ckpt, {"w": "t"}, {"t": target}, transforms={"t": spec})
        np.testing.assert_allclose(values["t"], want, rtol=1e-6, err_msg=repr(spec))


def test_transform_keys_exact_before_regex_and_typos_are_errors() -> None:
    ckpt = FakeCheckpoint({"a/kernel": rand(2, 3), "b/kernel": rand(2, 3)})
    params = {"a": {"kernel": zeros(3, 2)}, "b": {"kernel": zeros(2, 3)}}
    values = load(ckpt, None, params, transforms={r".*/kernel": "transpose", "b/kernel": []})
    assert values["a/kernel"].shape == (3, 2) and values["b/kernel"].shape == (2, 3)
    with pytest.raises(MappingError, match="transforms key 'a/kernal' matches no target leaf.*'a/kernel'"):
        plan(ckpt, None, params, transforms={"a/kernal": "transpose", "b/kernel": "transpose"})


def test_bad_transforms_are_errors_before_any_read() -> None:
    ckpt = FakeCheckpoint({"w": rand(2, 3)})
    for spec, match in [(("reshape", (5,)), "cannot reshape"), (("transpose", (0,)), "does not fit"),
                        ("flip", "is not one of"), (lambda x: x[0], r"shape mismatch.*after its transforms")]:
        with pytest.raises(MappingError, match=match):
            plan(ckpt, {"w": "t"}, {"t": zeros(2, 3)}, transforms={"t": spec})
    assert ckpt.reads == []


def test_callable_that_lies_about_its_shape_fails_on_read() -> None:
    ckpt = FakeCheckpoint({"w": rand(2, 3)})
    p = plan(ckpt, {"w": "t"}, {"t": zeros(2, 3)}, transforms={"t": lambda x: np.asarray(x)[:1]})
    with pytest.raises(MappingError, match="returned shape"):
        p.entries["t"].read()


def test_fn_with_shape_fn_is_used_as_is() -> None:
    ckpt = FakeCheckpoint({"w": rand(2, 3)})
    fn = Fn(lambda x: x.reshape(-1), shape_fn=lambda s: (s[0] * s[1],), name="flatten")
    values = load(ckpt, {"w": "t"}, {"t": zeros(6)}, transforms={"t": fn})
    np.testing.assert_array_equal(values["t"], ckpt.tensors["w"].reshape(-1))


def test_final_cast_to_target_dtype() -> None:
    w = rand(4)
    ckpt = FakeCheckpoint({"w": w, "i": np.arange(3), "s": np.array([b"x"], dtype=object),
                           "c": np.ones(2, np.complex64)})
    p = plan(ckpt, {"w": "t"}, {"t": jnp.zeros(4, jnp.bfloat16)})
    assert p.entries["t"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(p.entries["t"].read(), w.astype(ml_dtypes.bfloat16))
    assert p.report.matched["t"] == "w -> cast(bfloat16)"
    assert load(ckpt, {"i": "t"}, {"t": zeros(3)})["t"].dtype == np.float32
    with pytest.raises(MappingError, match="cannot load string tensor 's'"):
        plan(ckpt, {"s": "t"}, {"t": zeros(1)})
    with pytest.raises(MappingError, match="cannot load complex64 tensor 'c'"):
        plan(ckpt, {"c": "t"}, {"t": zeros(2)})


# ---- handles, report, strictness, messages -------------------------------------------------------

def test_nnx_variable_handle_as_target() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    ckpt = FakeCheckpoint({"dense/kernel": rand(3, 2), "dense/bias": rand(2)})
    p = plan(ckpt, {"dense/kernel": model.kernel, "dense/bias": model.bias}, model)
    assert sorted(p.entries) == ["bias", "kernel"]
    other = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(MappingError, match="Param given as a target is not a leaf"):
        plan(ckpt, {"dense/kernel": other.kernel}, model)


def test_report_and_strict() -> None:
    ckpt = FakeCheckpoint({"a/w": rand(2), "a/b": rand(2), "extra": rand(1)})
    params = {"x": {"w": zeros(2), "b": zeros(2)}, "y": zeros(1)}
    p = plan(ckpt, {"a/": "x/", "a/w": "x/b", "zz/": "nothing_here/"}, params)
    assert p.report.matched == {"x/b": "a/w", "x/w": "a/w"}
    assert p.report.unused == ["a/b", "extra"] and p.report.unset == ["y"]
    notes = "\n".join(p.report.notes)
    assert "'a/': 'x/' is overridden by map entry 'a/w'" in notes and "no target leaf is in scope" in notes
    summary = p.report.summary()
    assert "unused: extra" in summary and "unset:  y" in summary
    assert "  x/b <- a/w\n" in summary and "  x/w <- a/w\n" in summary
    assert p.report.lines() == ["x/b <- a/w", "x/w <- a/w"]
    assert "x/w <- a/w" not in p.report.summary(max_matched=1) and "... and 1 more" in p.report.summary(max_matched=1)
    with pytest.raises(MappingError, match="strict"):
        check_strict(p.report)
    check_strict(plan(ckpt, None, {"a": {"w": zeros(2), "b": zeros(2)}, "extra": zeros(1)}).report)


def test_report_lines_show_transforms() -> None:
    ckpt = FakeCheckpoint({"k": rand(2, 3)})
    p = plan(ckpt, {"k": "w"}, {"w": jnp.zeros((3, 2), jnp.bfloat16)}, transforms={"w": "transpose"})
    assert p.report.lines() == ["w <- k -> transpose[1, 0] -> cast(bfloat16)"]


def test_planning_reads_no_tensor_data() -> None:
    ckpt = FakeCheckpoint({"w": rand(100, 10), "v/part_0": rand(2, 3), "v/part_1": rand(2, 3)})
    plan(ckpt, None, {"w": jnp.zeros((10, 100), jnp.bfloat16), "v": zeros(4, 3)}, transforms={"w": "transpose"})
    assert ckpt.reads == []


def test_region_reads_of_partitioned_targets() -> None:
    ckpt = FakeCheckpoint({"w": rand(10, 4)})
    p = plan(ckpt, {"w": "w"}, {"w": {"part_0": zeros(5, 4), "part_1": zeros(5, 4)}})
    p.entries["w/part_1"].read()
    assert ckpt.reads == [("w", (slice(5, 10), slice(0, 4)))]


def test_messages_say_what_is_wrong() -> None:
    ckpt = FakeCheckpoint({"old/var1": rand(20, 2), "old/var2": rand(50, 4)})
    params = {"new": {"var1": zeros(20, 2), "var2": zeros(4, 50)}}
    with pytest.raises(MappingError) as e:
        plan(ckpt, {"old/var1": "new/"}, params)
    assert "Assignment map with scope only" not in str(e.value)
    assert "'new/' is not a leaf" in str(e.value) and "end both sides with '/'" in str(e.value)
    with pytest.raises(MappingError, match=r"no tensor 'old/varl'.*Close names: .*'old/var1'"):
        plan(ckpt, {"old/varl": "new/var1"}, params)
    with pytest.raises(MappingError, match=r"'new/vr1' is not a leaf.*Close names: 'new/var1'"):
        plan(ckpt, {"old/var1": "new/vr1"}, params)
    with pytest.raises(MappingError, match=r"shape \[4, 50\].*\[50, 4\].*'transpose'"):
        plan(ckpt, {"old/": "new/"}, params)


def test_all_problems_reported_together() -> None:
    ckpt = FakeCheckpoint({"a": rand(2)})
    with pytest.raises(MappingError, match=r"3 problems:\n- .*'b'.*\n- .*'c'.*\n- transforms key 'q'"):
        plan(ckpt, {"b": "x", "c": "x"}, {"x": zeros(2)}, transforms={"q": "transpose"})


def test_bad_map_shapes_are_errors() -> None:
    ckpt = FakeCheckpoint({"a": rand(2)})
    for mapping, match in [("a", "dict or a list"), ([("a",)], "pair"), ({1: "x"}, "strings"),
                           ({"a": 3}, "int given as a target"), ({"a": []}, "empty list"),
                           ({"/": "zz"}, "neither a leaf"), ({"/": "x"}, "its target must be a scope too")]:
        with pytest.raises(MappingError, match=match):
            plan(ckpt, mapping, {"x": zeros(2)})

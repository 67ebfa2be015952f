"""Numbers are validated where they are parsed: map files, transform arguments, layer indices in
tensor names and optimizer step counters. Each bad one is one ``MappingError`` naming the file or
tensor (the CLI: one line, exit 2), never Python's own ValueError or OverflowError, and a hostile
map file costs little.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tracemalloc

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tf_writers
import tf2flax
from tf2flax.conversion import load_map_file
from tf2flax.errors import MappingError

HUGE = "1" + "0" * 5000  # over Python's 4300-digit limit of int(str)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("numbers")
    return tf_writers.write_raw_bundle(d / "model", {"w": np.ones((4, 6), np.float32), "one": np.ones(1, np.float32)})


@pytest.mark.parametrize("name, text, message", [
    ("int.yaml", f"part_axis: {HUGE}\n", "an integer of 5001 characters"),
    ("int.json", f'{{"part_axis": {HUGE}}}', "an integer of 5001 digits"),
    ("flow.yaml", "map: [" + "a, " * 300_000 + "a]\n", "more than 20000 keys and values"),
    ("flow.json", '{"map": [' + '"a", ' * 200_000 + '"a"]}', "more than 20000 keys and values"),
    ("entries.yaml", "map:\n" + "".join(f"  s{i}/x/y: t{i}/x/y\n" for i in range(15_000)), "more than 20000 keys"),
    ("big.yaml", "map:\n" + "".join(f"  bert/layer_{i}/attention/kernel: params/bert/layer_{i}/attention/kernel\n"
                                      for i in range(15_000)), "is larger than 1 MB"),
    ("alias.yaml", "a: &a [x, x, x, x]\nb: [*a, *a, *a, *a]\n", "aliases (*a) are not allowed"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 and "." in v else "")
def test_hostile_map_files_are_one_line_and_cheap(small, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    began = time.perf_counter()
    with pytest.raises(MappingError, match=rf"map file {re.escape(str(path))}.*{re.escape(message)}"):
        load_map_file(path)
    seconds = time.perf_counter() - began
    tracemalloc.start()  # (tracing makes PyYAML several times slower: timed without it)
    try:
        with pytest.raises(MappingError):
            load_map_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 3 and peak < 100 << 20, (seconds, peak)
    r = _cli("convert", small, str(tmp_path / "out"), "--map", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"tf2flax: error: map file {path}"), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [
    (["reshape", [2.5, -1]], "2.5 is not an integer"),
    (["transpose", [True, False]], "True is not an integer"),
    (["reshape", [2**70, -1]], "is out of range"),
    (["reshape", "24"], "expected a list of integers"),
])
def test_transform_arguments_must_be_integers(small, tmp_path, spec, message):
    with pytest.raises(MappingError, match=f"transform .* for 'w': .*{message}"):
        tf2flax.convert(small, tmp_path / "out", transforms={"w": tuple(spec)}, dry_run=True)
    path = tmp_path / "map.json"
    path.write_text('{"transforms": {"w": %s}}' % str(spec).replace("'", '"').replace("True", "true")
                    .replace("False", "false"))
    r = _cli("convert", small, str(tmp_path / "out"), "--map", str(path), "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_a_reshape_of_more_than_64_dimensions_is_refused_at_plan_time(small, tmp_path):
    with pytest.raises(MappingError, match="'one': 72 dimensions; numpy arrays have at most 64"):
        tf2flax.convert(small, tmp_path / "out", transforms={"one": ("reshape", [1] * 72)}, dry_run=True)
    from tf2flax.plan import Reshape

    with pytest.raises(MappingError, match="72 dimensions"):  # a plan transform built directly, too
        Reshape((1,) * 72).out_shape((1,))
    assert tf2flax.convert(small, tmp_path / "out", transforms={"one": ("reshape", [1] * 64)},
                           dry_run=True).plan.entries["one"].shape == (1,) * 64


def test_layer_indices_of_thousands_of_digits_are_one_line(tmp_path):
    prefix = tf_writers.write_raw_bundle(tmp_path / "model", {f"enc/layer_{HUGE}/w": np.ones(2, np.float32),
                                                              "enc/layer_0/w": np.ones(2, np.float32)})
    for options in ({"mapping": {"enc/layer_{i}/": "layers/"}}, {"rules": [["enc/layer_{i}/", "layers_{i}/"]]},
                    {"rules": [["enc/layer_{i}/", "layers/"]]}):
        with pytest.raises(MappingError, match=r"tensor 'enc/layer_1000.*: layer index '1000.* has 5001 digits"):
            tf2flax.convert(prefix, tmp_path / "out", dry_run=True, **options)
    with pytest.raises(MappingError, match="has 5001 digits"):
        tf2flax.init_params(prefix, {"enc/layer_{i}/": "layers/"}, {"layers": {"w": jnp.zeros((2, 2))}})
    # Leading zeros are no digits of the index.
    padded = tf_writers.write_raw_bundle(tmp_path / "padded" / "model", {
        f"enc/layer_{'0' * 5000}/w": np.ones(2, np.float32), f"enc/layer_{'0' * 4999}1/w": np.ones(2, np.float32)})
    plan = tf2flax.convert(padded, tmp_path / "out", dry_run=True, mapping={"enc/layer_{i}/": "layers/"}).plan
    assert plan.entries["layers/w"].shape == (2, 2)


@pytest.mark.parametrize("step, message", [
    (np.float64("nan"), "optimizer counter 'global_step' is nan, not a whole number of steps"),
    (np.float64(1e300), "optimizer counter 'global_step' is 1e\\+300, larger than any step count"),
    (np.float32(5.5), "optimizer counter 'global_step' is 5.5, not a whole number"),
    (np.int64(-3), "optimizer counter 'global_step' is -3, not a step count"),
    (np.int64(2**62), r"step count 4611686018427387904 \(from global_step\) does not fit 0/count \(int32"),
])
def test_bad_step_counters_name_the_tensor(tmp_path, step, message):
    prefix = tf_writers.write_raw_bundle(tmp_path / "model", {
        "d1/kernel": np.ones((2, 3), np.float32), "d1/kernel/Adam": np.ones((2, 3), np.float32),
        "d1/kernel/Adam_1": np.ones((2, 3), np.float32), "global_step": step})
    params = {"params": {"d1": {"kernel": jnp.zeros((2, 3))}}}
    with pytest.raises(MappingError, match=message):
        tf2flax.init_opt_state(prefix, {"d1/": "params/d1/"}, params, optax.adam(1e-3).init(params), progress=False)
    with pytest.raises(MappingError, match="count=2.5: expected a step count"):
        tf2flax.init_opt_state(prefix, {"d1/": "params/d1/"}, params, optax.adam(1e-3).init(params), count=2.5,
                               progress=False)
    state = tf2flax.init_opt_state(prefix, {"d1/": "params/d1/"}, params, optax.adam(1e-3).init(params), count=7,
                                   progress=False)  # a given count: the counter is not read
    assert int(state[0].count) == 7

"""Start-up: ``import tf2flax``, ``ls`` and ``list_variables`` of a local checkpoint stay light.

jax, flax, orbax and tensorstore load only when something needs them (``init_params``, ``convert``,
a URL); ml_dtypes (about half a second to import in 0.7) only when a tensor of one of its types
(bfloat16, float8, int4...) is met. Each check runs in a fresh interpreter, so nothing imported by the
test session counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("jax", "flax", "orbax", "orbax.checkpoint", "tensorstore", "tensorflow", "ml_dtypes")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bert_tiny"

PROBE = """
import io, json, sys, contextlib
import tf2flax
from tf2flax.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    status = main(["ls", *sys.argv[2:]])
names = tf2flax.list_variables(sys.argv[1])
listed = sorted(m for m in {heavy!r} if m in sys.modules)
with tf2flax.open_checkpoint(sys.argv[1]) as ckpt:
    dtypes = sorted({{str(ckpt.read(name).dtype) for name in ckpt.names}})
print(json.dumps({{"status": status, "listed": len(names), "ls_lines": len(out.getvalue().splitlines()),
                  "loaded": listed, "read_loaded": sorted(m for m in {heavy!r} if m in sys.modules),
                  "dtypes": dtypes}}))
"""


def extended(dtypes: list[str]) -> set[str]:
    """The dtype names that are ml_dtypes' own (bfloat16, float8_*, int4...), not numpy's."""
    return {d for d in dtypes if d.startswith(("bfloat", "float8", "float4", "int4", "uint4", "int2", "uint2"))}


def probe(path: str, *ls_args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), path, path, *ls_args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("ls_args", [(), ("--json",), ("--names", "object"), ("--names", "full")])
def test_ls_of_a_float32_tf2_checkpoint_imports_no_jax_nor_ml_dtypes(keras3_ckpt, ls_args):
    got = probe(keras3_ckpt.prefix, *ls_args)
    assert got["status"] == 0 and got["listed"] > 0 and got["ls_lines"] > got["listed"]
    assert "float32" in got["dtypes"] and not extended(got["dtypes"])
    assert got["loaded"] == [] and got["read_loaded"] == []


def test_ls_of_the_shipped_bert_example_imports_no_jax():
    got = probe(str(EXAMPLE))
    assert got["status"] == 0 and got["listed"] > 10 and "float32" in got["dtypes"]
    assert got["loaded"] == [] and got["read_loaded"] == []


@pytest.mark.parametrize("fixture", ["tf2_ckpt", "zoo_ckpt"])
def test_ml_dtypes_loads_when_a_tensor_needs_it(request, fixture):
    """Checkpoints with bfloat16 tensors: ls and reads work, and import ml_dtypes for them (nothing heavier)."""
    got = probe(request.getfixturevalue(fixture).prefix, "--json")
    assert got["status"] == 0 and "bfloat16" in extended(got["dtypes"]) and "float32" in got["dtypes"]
    assert got["loaded"] == got["read_loaded"] == ["ml_dtypes"]


def test_import_tf2flax_imports_no_ml_dtypes():
    code = "import sys, tf2flax, tf2flax.cli, tf2flax.formats; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code.format(heavy=HEAVY)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_lazy_attributes_load_on_first_use():
    code = ("import sys, tf2flax; before = 'jax' in sys.modules; f = tf2flax.init_params; "
            "from tf2flax import convert, ConvertResult, LoadResult, plan_params; "
            "print(before, 'jax' in sys.modules, callable(f) and callable(convert))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def test_unknown_attribute_is_an_attribute_error():
    import tf2flax

    with pytest.raises(AttributeError, match="no_such_thing"):
        tf2flax.no_such_thing  # noqa: B018

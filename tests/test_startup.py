"""Start-up: ``import tf2flax``, ``ls`` and ``list_variables`` of a local checkpoint stay light.

jax, flax, orbax and tensorstore load only when something needs them (``init_params``, ``convert``,
a URL). Each check runs in a fresh interpreter, so nothing imported by the test session counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("jax", "flax", "orbax", "orbax.checkpoint", "tensorstore", "tensorflow")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bert_tiny"

PROBE = """
import io, json, sys, contextlib
import tf2flax
from tf2flax.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    status = main(["ls", *sys.argv[2:]])
names = tf2flax.list_variables(sys.argv[1])
loaded = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"status": status, "listed": len(names), "ls_lines": len(out.getvalue().splitlines()),
                  "loaded": loaded}}))
"""


def probe(path: str, *ls_args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), path, path, *ls_args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("ls_args", [(), ("--json",), ("--names", "object"), ("--names", "full")])
def test_ls_of_a_tf2_checkpoint_imports_no_jax(tf2_ckpt, ls_args):
    got = probe(tf2_ckpt.prefix, *ls_args)
    assert got["status"] == 0 and got["listed"] > 0 and got["ls_lines"] > got["listed"]
    assert got["loaded"] == []


def test_ls_of_the_shipped_bert_example_imports_no_jax():
    got = probe(str(EXAMPLE))
    assert got["status"] == 0 and got["listed"] > 10
    assert got["loaded"] == []


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

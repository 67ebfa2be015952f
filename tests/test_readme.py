"""Every code block of the README runs as written, in document order, from a copy of the repository.

``python`` blocks run as scripts, ``bash`` blocks as shell scripts (the two set-up commands are
tested elsewhere: ``test_examples.py`` runs the main command, CI the test command). A ``text``
block right after a ``bash`` block is that block's expected output.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- (?:main|test)-command -->\n)?```(\w*)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block, without the set-up commands."""
    text = (ROOT / "README.md").read_text()
    return [(lang, code) for marker, lang, code in BLOCK.findall(text) if not marker]


def run(lang: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    argv = [sys.executable, "-c", code] if lang == "python" else ["bash", "-eo", "pipefail", "-c", code]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_readme_has_runnable_blocks():
    langs = [lang for lang, _ in readme_blocks()]
    assert langs.count("python") >= 2 and langs.count("bash") >= 2
    assert set(langs) <= {"python", "bash", "text"}, "every block is code to run or the output before it"


def test_every_readme_block_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    previous = None
    for lang, code in readme_blocks():
        if lang == "text":
            assert previous is not None, "a text block follows the command whose output it shows"
            for line in code.strip().splitlines():
                assert line in previous.stdout + previous.stderr, f"README output line not produced: {line!r}"
            continue
        done = run(lang, code, tmp_path)
        assert done.returncode == 0, f"README {lang} block failed:\n{code}\n--- output:\n{done.stdout}\n{done.stderr}"
        previous = done


def test_mapping_docs_error_sample_is_the_real_message(tmp_path):
    import numpy as np
    import tensorflow as tf

    import tf2flax
    from tf2flax.errors import MappingError

    doc = (ROOT / "docs" / "mapping.md").read_text()
    sample = re.search(r"```\n(2 problems:\n.*?)```", doc, re.S).group(1).strip()
    graph = tf.Graph()
    with graph.as_default():
        for scope, names in {"old_scope_1": {"var1": [20, 2], "var2": [50, 4]}, "old_scope_2": {"var3": [100, 100]}}.items():
            with tf.compat.v1.variable_scope(scope):
                for name, shape in names.items():
                    tf.compat.v1.get_variable(name, shape)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "model.ckpt"))
    params = {"new_scope_1": {"var1": np.zeros((20, 2), np.float32)}}
    try:
        tf2flax.init_params(tmp_path / "model.ckpt", {"old_scope_1/var1": "new_scope_1/varr",
                                                      "old_scope_1/var3": "new_scope_1/var1"}, params)
    except MappingError as e:
        assert str(e).replace(str(tmp_path), "/tmp") == sample
    else:
        raise AssertionError("the map in docs/mapping.md must fail")

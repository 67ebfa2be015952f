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

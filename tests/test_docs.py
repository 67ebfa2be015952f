"""Every code block of ``docs/*.md`` runs as written against ``examples/``, or says it is an excerpt.

The convention, one HTML comment on the line right before the block's opening fence:

- no comment: a ``python``, ``bash`` or ``shell`` block runs as written, in document order, each in a
  fresh process, from a temporary directory holding a copy of ``examples/`` (files one block writes
  are there for the next); a ``text`` block right after a block that ran is output: each of its lines
  must be in what that block printed (where paths in that directory print relative to it).
- ``<!-- file: NAME -->``: the block is a file (a map file, say) written as ``NAME`` into that
  directory for the blocks after it.
- ``<!-- excerpt: PATH ... -->``: the block is not run here. ``PATH`` is the repository file that
  runs the whole of it (an example script under ``examples/``, run by ``tests/test_examples.py``, or
  the test that runs it against a local server); every ``tf2flax.<name>`` the block uses must appear
  in that file, so an excerpt cannot point at a script that does something else.

Any other block (a ``yaml`` block without ``file:``, a block with no language) fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(?:^<!-- (excerpt|file): ([^\n]*?) -->\n)?^```(\w*)\n(.*?)^```", re.S | re.M)
RUN = {"python", "bash", "shell"}


def blocks(doc: Path) -> list[tuple[str | None, str, str, str, int]]:
    """(marker, marker argument, language, code, line number) of every fenced block of ``doc``."""
    text = doc.read_text()
    return [(m[1], m[2] or "", m[3], m[4], text.count("\n", 0, m.start()) + 1) for m in BLOCK.finditer(text)]


def problems_of(doc: Path, root: Path = ROOT) -> list[str]:
    """Blocks that neither run nor say what they are (excerpt paths are relative to ``root``)."""
    out = []
    for marker, arg, lang, code, line in blocks(doc):
        where = f"{doc.name}:{line}"
        if marker == "excerpt":
            source = root / arg.split()[0] if arg else None
            if source is None or not source.is_file():
                out.append(f"{where}: excerpt of {arg!r}, which is not a file of the repository")
                continue
            used = set(re.findall(r"\btf2flax\.(\w+)", code))
            missing = sorted(n for n in used if not re.search(rf"\b{n}\b", source.read_text()))
            if missing:
                out.append(f"{where}: excerpt of {arg.split()[0]}, which does not use {missing}")
        elif marker == "file":
            if not re.fullmatch(r"[\w.-]+", arg):
                out.append(f"{where}: file name {arg!r} is not a plain file name")
        elif lang not in RUN | {"text"}:
            out.append(f"{where}: a {lang or 'plain'} block that is neither run, a file, nor an excerpt")
    return out


def test_the_convention_catches_unmarked_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```yaml\na: 1\n```\n\n```\nout\n```\n\n<!-- excerpt: examples/nope.py -->\n```python\nx\n```\n"
                   "\n<!-- excerpt: examples/bert_tf1_to_flax.py -->\n```python\ntf2flax.convert(a, b)\n```\n"
                   "\n<!-- file: m.yaml -->\n```yaml\na: 1\n```\n")
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "bert_tf1_to_flax.py", tmp_path / "examples")
    found = problems_of(doc, root=tmp_path)
    assert len(found) == 4, found
    assert "a yaml block" in found[0] and "a plain block" in found[1] and "not a file" in found[2]
    assert "does not use ['convert']" in found[3]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_block_runs_or_is_marked(doc):
    assert problems_of(doc) == []


def run(lang: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    argv = [sys.executable, "-c", code] if lang == "python" else ["bash", "-eo", "pipefail", "-c", code]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("doc", [d for d in DOCS if any(m != "excerpt" and lang != "text"
                                                         for m, _, lang, _, _ in blocks(d))],
                         ids=lambda d: d.name)
def test_every_block_runs_as_written(doc, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    previous = None
    for marker, arg, lang, code, line in blocks(doc):
        if marker == "excerpt":
            previous = None
            continue
        if marker == "file":
            (tmp_path / arg).write_text(code)
            continue
        if lang == "text":
            assert previous is not None, f"{doc.name}:{line}: a text block follows the block whose output it is"
            printed = (previous.stdout + previous.stderr).replace(f"{tmp_path}{os.sep}", "")
            for expected in code.strip().splitlines():
                assert expected.strip() in printed, (
                    f"{doc.name}:{line}: output line not produced: {expected!r}\n--- output:\n{previous.stdout}"
                    f"\n{previous.stderr}")
            continue
        done = run(lang, code, tmp_path)
        assert done.returncode == 0, (f"{doc.name}:{line}: {lang} block failed:\n{code}\n--- output:\n"
                                      f"{done.stdout}\n{done.stderr[-4000:]}")
        previous = done

"""The repository runs anywhere: no file names a path that exists on one machine only.

Tests read their data from ``tests/data/`` (real checkpoints, byte for byte, provenance in
``tests/data/realworld/README.md``) and from the temporary directories they make, never from a
folder beside the clone. A path such as ``/home/someone/...`` or a walk up to a sibling ``shared/``
folder works on the machine that wrote it and breaks every fresh clone, so this test fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "tf2flax", "benchmarks", "examples", "docs", ".ci")
TOP_LEVEL = ("README.md", "pyproject.toml")
THIRD_PARTY = ROOT / "tests" / "data"  # other people's bytes, kept exactly as published
# Home and workspace folders of one machine, and the sibling shared/realworld folder the tests used to read.
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:work|root|home|Users|mnt)/"
                          r"|\b[A-Z]:\\\\?Users\\"
                          r"|shared\W{0,8}realworld")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for top in SCANNED:
        files += [p for p in sorted((ROOT / top).rglob("*")) if p.is_file() and THIRD_PARTY not in p.parents
                  and "__pycache__" not in p.parts]
    return files


def machine_paths(text: str) -> list[str]:
    return [m.group(0) for m in MACHINE_PATH.finditer(text)]


def test_the_pattern_catches_machine_paths_and_spares_portable_ones():
    # (built from parts, so that this file itself names no machine's path)
    for bad in ('Path("/%s/shared/realworld")' % "work", "open('/%s/me/ckpt')" % "home", '"/Users/me/x"',
                "/%s/.cache/x" % "root", 'p / "shared" / "realworld"', r"C:\Users\me\ckpt"):
        assert machine_paths(bad), bad
    for fine in ("/tmp/model.ckpt", "gs://bucket/home/x", "file:///tmp/x/", "tests/data/realworld/t5x",
                 "https://example.com/home/x", "examples/bert_tiny"):
        assert not machine_paths(fine), fine


def test_no_file_names_a_path_of_one_machine():
    me = Path(__file__).resolve()
    found = []
    for path in scanned_files():
        if path == me:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_bytes().decode("latin-1")
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                  for m in MACHINE_PATH.finditer(text)]
    assert not found, "paths that exist on one machine only:\n" + "\n".join(found)


def test_the_real_checkpoints_ship_with_the_tests():
    realworld = THIRD_PARTY / "realworld"
    readme = (realworld / "README.md").read_text()
    folders = sorted(p.name for p in realworld.iterdir() if p.is_dir())
    assert folders == ["keras_churn_model_weights_h5", "serving_half_plus_two_tf2_cpu", "t5x_mtf_tiny_t5"]
    for name in folders:
        assert f"`{name}/" in readme, f"{name} has no provenance in {realworld / 'README.md'}"
        assert any(p.stat().st_size > 0 for p in (realworld / name).rglob("*") if p.is_file())

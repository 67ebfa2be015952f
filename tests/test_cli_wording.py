"""One language per interface: the command line speaks in flags and names the user's paths, the
Python API speaks in arguments; ``--version``; ``--debug``/``--quiet`` before or after the subcommand;
``ls`` and ``convert`` name tensors alike by default and say so in ``--help``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import tf2flax
import tf_writers
from tf2flax.errors import OutputExistsError, StorageError, command_line_wording, option, spoken

ROOT = Path(__file__).resolve().parents[1]
BERT = ROOT / "examples" / "bert_tiny"
GARDEN = ROOT / "examples" / "bert_tiny_garden"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}
API_WORDS = re.compile(r"\w+=(True|False|None)\b|\w+\.\w+\(\)")  # force=True, report.lines()


def cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def test_version_from_the_package_metadata():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"tf2flax {version}" == f"tf2flax {tf2flax.__version__}"
    entry = shutil.which("tf2flax")
    if entry:  # the console script, where the package is installed
        done = subprocess.run([entry, "--version"], capture_output=True, text=True, env=ENV, timeout=120)
        assert done.stdout.startswith("tf2flax ")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_and_quiet_before_or_after_the_subcommand(tmp_path, where):
    flags = ["--debug", "--quiet"]
    args = [*flags, "ls", tmp_path / "nothing"] if where == "before" else ["ls", tmp_path / "nothing", *flags]
    done = cli(*args)
    assert done.returncode == 2 and "Traceback" in done.stderr and "CheckpointNotFoundError" in done.stderr
    quiet = cli(*(["--quiet", "convert", BERT, tmp_path / "out"] if where == "before"
                  else ["convert", BERT, tmp_path / "out", "--quiet"]))
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    assert (tmp_path / "out").is_dir()


def test_ls_and_convert_name_tensors_alike_and_say_so(tmp_path):
    for command in ("ls", "convert"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert re.search(r"object \(the default", text), text
    listed = cli("ls", GARDEN / "bert_model.ckpt")
    names = {line.split()[0] for line in listed.stdout.splitlines()[2:-1]}
    planned = cli("convert", GARDEN / "bert_model.ckpt", tmp_path / "out", "--dry-run")
    assert listed.returncode == planned.returncode == 0, planned.stderr
    converted = {line.split(" <- ")[0].strip() for line in planned.stdout.splitlines() if " <- " in line}
    assert converted and converted <= names  # what convert writes is what ls shows (ls also shows what is left out)
    assert not any(".ATTRIBUTES" in n for n in converted)
    by_key = cli("ls", GARDEN / "bert_model.ckpt", "--names", "key").stdout.splitlines()[2:-1]
    keys = {line.split()[0] for line in by_key}
    assert any(k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for k in keys) and len(keys) == len(names)


def test_wording_helpers():
    assert (option("force"), option("dtype", "bfloat16"), spoken("a", "b")) == ("force=True", "dtype='bfloat16'", "a")
    with command_line_wording():
        assert (option("force"), option("dtype", "bfloat16"), spoken("a", "b")) == ("--force", "--dtype bfloat16", "b")
    assert option("include_optimizer") == "include_optimizer=True"


def test_existing_output_cli_speaks_flags_api_speaks_arguments(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = cli("convert", BERT, out)
    assert done.returncode == 2
    assert done.stderr == f"tf2flax: error: {out} already exists; use --force to replace it\n"
    with pytest.raises(OutputExistsError) as caught:
        tf2flax.convert(BERT, out)
    assert str(caught.value) == f"{out} already exists; use force=True to replace it"
    (out / "mine.txt").write_text("keep")
    forced = cli("convert", BERT, out, "--force")
    assert forced.returncode == 2 and "; --force replaces only" in forced.stderr
    assert "choose another OUT" in forced.stderr and not API_WORDS.search(forced.stderr)
    with pytest.raises(OutputExistsError, match="; force=True replaces only .* choose another output path$"):
        tf2flax.convert(BERT, out, force=True)


def test_summary_of_many_matches_points_to_the_interface_in_use(tmp_path):
    """The CLI shows the report only under --dry-run, after every match."""
    done = cli("convert", BERT, tmp_path / "out", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "more match(es) (all listed above)" in done.stdout
    assert not API_WORDS.search(done.stdout + done.stderr), done.stdout
    result = tf2flax.convert(BERT, tmp_path / "api", dry_run=True)
    assert "more match(es) (report.lines() has all)" in result.plan.report.summary()


def test_output_under_a_file_or_dangling_link_names_the_users_paths(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for parent, why in (("afile", "is a file, not a directory"), ("dangling", "is a symbolic link to")):
        out = tmp_path / parent / "sub" / "out"
        done = cli("convert", BERT, out)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"tf2flax: error: {out}: cannot create its directory {out.parent}: "
                                      f"{tmp_path / parent} {why}"), done.stderr
        assert "Errno" not in done.stderr and ".tmp-" not in done.stderr and not API_WORDS.search(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dangling"]


def test_output_directory_lost_while_converting_names_out_not_our_temporary(tmp_path):
    """The directory above OUT is replaced by a file halfway through (a callable transform does it):
    the error names OUT and what is in the way, never the temporary ``OUT.tmp-<hex>``, and nothing is left."""
    parent = tmp_path / "run" / "sub"
    prefix = tf_writers.write_raw_bundle(tmp_path / "ckpt" / "model.ckpt", {"a": np.ones(3, np.float32)})

    def vanish(x):
        shutil.rmtree(tmp_path / "run")
        (tmp_path / "run").write_text("in the way")
        return x

    with pytest.raises(StorageError) as caught:
        tf2flax.convert(prefix, parent / "out", transforms={"a": vanish})
    message = str(caught.value)
    assert message == f"{parent / 'out'}: writing the output failed: {tmp_path / 'run'} is a file, not a directory"
    assert ".tmp-" not in message and "Errno" not in message


def test_gloo_messages_run_together_leave_no_blank_line():
    """Two gloo threads writing at once ran their messages into one line and left a blank line after it,
    which --quiet printed (CI saw stdout '\\n' from process 0)."""
    from tf2flax.conversion.native_output import without_lines

    held = [b"[Gloo] Rank 0 is connected to 1 peer ranks.[Gloo] Rank 0 is connected to 1 peer ranks.\n", b"\n"]
    assert without_lines(held) == b""
    assert without_lines([b"[Gloo] x\n", b"\n", b"summary\n"]) == b"\n" + b"summary\n"  # a blank line of ours stays
    assert without_lines([b"ours\n", b"[Gloo] a[Gloo] b[Gloo] c\n", b"\n", b"\n", b"\n"]) == b"ours\n\n"

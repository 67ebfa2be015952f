"""``python -m tf2flax convert|ls``, end to end in subprocesses."""

from __future__ import annotations

import json
import os
import re
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tf_writers

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def test_ls_table_marks_sliced_variables_and_totals(tf1_ckpt):
    done = cli("ls", tf1_ckpt.prefix)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"V2 checkpoint: {tf1_ckpt.prefix}"
    assert lines[1].split() == ["name", "shape", "dtype", "size", "shard", "sliced"]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert set(rows) == {name for name, _ in tf_writers.tf_list_variables(tf1_ckpt.prefix)}
    assert rows["part/rows"].split() == ["part/rows", "[10,", "3]", "float32", "120", "B", "0", "yes", "(3)"]
    assert rows["dense/kernel"].split() == ["dense/kernel", "[4,", "6]", "float32", "96", "B", "0"]
    assert rows["cpu1/names"].split()[2:4] == ["string", "163"]
    assert lines[-1] == "13 tensors, 257 KB in 2 shard(s), 6 sliced"


def test_ls_json_and_names(keras3_ckpt):
    done = cli("ls", keras3_ckpt.prefix, "--json", "--names", "full")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    tf_shapes = dict(tf_writers.tf_list_variables(keras3_ckpt.prefix))
    assert listing["format"] == "tf2" and listing["total"]["tensors"] == len(tf_shapes)
    by_key = {t["key"]: t for t in listing["tensors"]}
    assert {k: t["shape"] for k, t in by_key.items()} == tf_shapes
    kernel = by_key["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    assert kernel["name"] == "sequential/d1/kernel" and kernel["dtype"] == "float32" and kernel["bytes"] == 128
    objects = json.loads(cli("ls", keras3_ckpt.prefix, "--json", "--names", "object").stdout)
    assert "model/_functional/_operations/1/_kernel" in {t["name"] for t in objects["tensors"]}


def test_convert_round_trip_and_summary(tf2_ckpt, tmp_path):
    out = tmp_path / "out"
    done = cli("convert", tf2_ckpt.prefix, out)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "tf2flax: warning: left out 1 string tensor(s), which Orbax cannot store: strings\n"
    expected = tf_writers.tf_read_all(tf2_ckpt.prefix)
    count = sum(v.dtype != object and not k.startswith("save_counter/") for k, v in expected.items())
    assert re.match(rf"converted {count} tensors, [\d.]+ (B|KB|MB) in ", done.stdout), done.stdout
    assert done.stdout.endswith(f"-> {out}\n")
    assert re.search(r" in [\d.]+ s \([\d.]+ (B|KB|MB|GB)/s\) -> ", done.stdout), done.stdout
    assert len(done.stdout.splitlines()) == 1
    import orbax.checkpoint as ocp

    restored = ocp.v1.load(out)
    for name in ("big_rows", "big_3d", "bfloat16", "uint64", "complex128", "with..dot"):
        tf_writers.assert_tensor_equal(restored[name], expected[f"{name}/.ATTRIBUTES/VARIABLE_VALUE"], name)
    assert tf_writers.tensor_mismatch(restored["nested"]["inner"],
                                      expected["nested/inner/.ATTRIBUTES/VARIABLE_VALUE"]) is None


def test_convert_with_map_file_dtype_and_quiet(keras3_ckpt, tmp_path):
    map_file = tmp_path / "keras.yaml"
    map_file.write_text('map:\n  "sequential/": "params/"\ntransforms:\n  ".*/kernel": transpose\n')
    out = tmp_path / "out"
    done = cli("convert", keras3_ckpt.prefix, out, "--map", map_file, "--preset", "keras", "--dtype", "float16",
               "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    import orbax.checkpoint as ocp

    params = ocp.v1.load(out)["params"]
    assert sorted(params) == ["bn", "d1", "d2"] and sorted(params["bn"]) == ["bias", "mean", "scale", "var"]
    reader = tf_writers.tf().train.load_checkpoint(keras3_ckpt.prefix)
    kernel = reader.get_tensor("optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(params["d1"]["kernel"], kernel.T.astype(np.float16))


def test_dry_run_prints_plan_and_report_and_writes_nothing(keras3_ckpt, tmp_path):
    done = cli("convert", keras3_ckpt.prefix, tmp_path / "out", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert ("model/_functional/_operations/1/_kernel <- optimizer/_trainable_variables/0/.ATTRIBUTES/"
            "VARIABLE_VALUE  [4, 8] float32") in lines
    assert "matched 8 target(s), 0 checkpoint tensor(s) unused, 0 target(s) unset" in lines
    assert "  left out: optimizer/_variables/2 (optimizer state)" in lines
    assert lines[-1].startswith("dry run: 8 tensors")
    assert os.listdir(tmp_path) == []

    full = cli("convert", keras3_ckpt.prefix, tmp_path / "out", "--dry-run", "--names", "full", "--preset", "keras")
    assert full.returncode == 0, full.stderr
    assert "sequential/bn/scale <- sequential/bn/gamma  [8] float32" in full.stdout.splitlines()

    map_file = tmp_path / "full.yaml"
    map_file.write_text("names: full\npreset: keras\n")
    from_file = cli("convert", keras3_ckpt.prefix, tmp_path / "out", "--dry-run", "--map", map_file)
    assert from_file.stdout == full.stdout
    overridden = cli("convert", keras3_ckpt.prefix, tmp_path / "out", "--dry-run", "--map", map_file, "--names", "object")
    assert "model/_functional/_operations/2/scale <- " in overridden.stdout
    assert os.listdir(tmp_path) == ["full.yaml"]


def _bad_map(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text('{"map": {"a/": ')
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no checkpoint here"),
    ("not_a_checkpoint", "not a TensorFlow checkpoint"),
    ("bad_map", "map file"),
    ("exists", "already exists; use --force"),
])
def test_bad_input_one_line_exit_2_nothing_touched(tf1_ckpt, tmp_path, case, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "junk.txt").write_text("not a checkpoint")
    (work / "existing").mkdir()
    (work / "existing" / "mine.txt").write_text("keep me")
    ckpt, out, extra = tf1_ckpt.prefix, work / "out", []
    if case == "missing":
        ckpt = work / "nothing-here"
    elif case == "not_a_checkpoint":
        ckpt = work / "junk.txt"
    elif case == "bad_map":
        extra = ["--map", _bad_map(tmp_path)]
    else:
        out = work / "existing"
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    done = cli("convert", ckpt, out, *extra)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("tf2flax: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    assert (work / "existing" / "mine.txt").read_text() == "keep me"


def test_ls_bad_input_and_debug_traceback(tmp_path):
    done = cli("ls", tmp_path / "nothing")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    debug = cli("ls", tmp_path / "nothing", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "CheckpointNotFoundError" in debug.stderr
    assert debug.stderr.endswith(done.stderr)


def test_convert_debug_exits_2_with_a_traceback(tf1_ckpt, tmp_path):
    map_file = tmp_path / "map.yaml"
    map_file.write_text('part_axis: "x"\n')
    done = cli("convert", tf1_ckpt.prefix, tmp_path / "out", "--map", map_file, "--debug")
    assert done.returncode == 2 and "Traceback" in done.stderr and "MappingError" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("tf2flax: error: map file ")
    assert sorted(os.listdir(tmp_path)) == ["map.yaml"]


def test_force_refuses_the_checkpoint_directory_and_the_current_one(tmp_path):
    run = tmp_path / "run"
    prefix = tf_writers.write_raw_bundle(run / "model.ckpt-1", {"w": np.ones(3, np.float32)})
    (run / "train.py").write_text("print('training')")
    before = sorted(p.name for p in run.iterdir())
    for out, message in ((run, "holds the checkpoint being converted"), (".", "holds the checkpoint being converted"),
                         (tmp_path, "holds the checkpoint being converted")):
        done = cli("convert", prefix, out, "--force", cwd=run)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1
    work = tmp_path / "work"
    work.mkdir()
    done = cli("convert", prefix, ".", "--force", cwd=work)
    assert done.returncode == 2 and "holds the current directory" in done.stderr
    assert sorted(p.name for p in run.iterdir()) == before and os.listdir(work) == []
    assert cli("convert", prefix, run, "--dry-run").returncode == 0  # a dry run writes nothing: no refusal


def test_progress_bar_on_a_terminal_only(tf1_ckpt, tmp_path):
    plain = cli("convert", tf1_ckpt.prefix, tmp_path / "plain")
    assert "converting" not in plain.stderr and "━" not in plain.stderr
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tf2flax", "convert", tf1_ckpt.prefix, str(tmp_path / "tty")],
                            stdin=child, stdout=child, stderr=child, env={**ENV, "TERM": "xterm"}, close_fds=True)
    os.close(child)
    output = b""
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        try:
            chunk = os.read(main, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=60) == 0
    os.close(main)
    text = output.decode("utf-8", "replace")
    assert "converting" in text and "━" in text and "converted 12 tensors" in text


@pytest.mark.parametrize("signum, status, message", [
    (signal.SIGINT, 130, "tf2flax: interrupted"),
    (signal.SIGTERM, 143, ""),
])
def test_sigint_and_sigterm_leave_no_checkpoint(tmp_path, signum, status, message):
    rng = np.random.default_rng(0)
    prefix = tf_writers.write_raw_bundle(tmp_path / "big" / "model", {
        f"layer_{i}": rng.standard_normal((2048, 4096), dtype=np.float32) for i in range(8)})  # 8 x 32 MiB
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tf2flax", "convert", prefix, str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("out.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "convert ended before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status and stderr.strip().endswith(message) and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]  # no OUT, no OUT.tmp-*, no Orbax tmp dirs

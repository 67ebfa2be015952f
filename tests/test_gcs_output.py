"""``convert`` to ``gs://``: written in place on a real (emulated) GCS server on 127.0.0.1, committed
with Orbax's own protocol (``commit_success.txt`` last), restored by plain Orbax; ``--force``,
refusals, failures and a killed run; and two ``jax.distributed`` processes writing one checkpoint.

The server is gcp-storage-emulator (see ``gcs_emulator.py``). TensorStore reaches it through
``TENSORSTORE_GCS_HTTP_URL`` and Orbax's file system (etils.epath on gcsfs) through
``STORAGE_EMULATOR_HOST``, set for this module and passed to every child process.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

import tf2flax
from gcs_emulator import GcsEmulator
from tf2flax.errors import OutputExistsError, StorageError, UnsupportedFormatError

BUCKET = "tf2flax-out"


@pytest.fixture(scope="module")
def gcs():
    # etils.epath decides once per process whether gs:// goes through TensorFlow (installed here, and
    # unable to reach a local server) or gcsfs: decide again under EPATH_USE_TF=false, and after.
    from etils.epath import gpath

    mp = pytest.MonkeyPatch()
    with GcsEmulator(BUCKET) as server:
        for key, value in server.env().items():
            mp.setenv(key, value)
        gpath._is_tf_installed.cache_clear()
        yield server
    mp.undo()
    gpath._is_tf_installed.cache_clear()


@pytest.fixture(scope="module")
def local(tf1_ckpt, tmp_path_factory) -> dict[str, np.ndarray]:
    """The same checkpoint converted to a local directory: what every gs:// output must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    tf2flax.convert(tf1_ckpt.prefix, out)
    return _leaves(ocp.v1.load(str(out)))


def _leaves(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": np.asarray(v)})
    return out


def _assert_equal(url: str, expected: dict[str, np.ndarray]) -> None:
    """Plain Orbax restores ``url``, finished by Orbax's own rule, equal to ``expected``."""
    assert ocp.utils.is_checkpoint_finalized(url)
    ours = _leaves(ocp.v1.load(url))
    assert sorted(ours) == sorted(expected)
    for name, value in ours.items():
        assert value.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def test_convert_to_gs_restores_with_plain_orbax(gcs, tf1_ckpt, local):
    result = tf2flax.convert(tf1_ckpt.prefix, f"gs://{BUCKET}/runs/a/")
    assert result.out == f"gs://{BUCKET}/runs/a" and result.tensors == len(local)
    names = gcs.names("runs/a/")
    assert "runs/a/commit_success.txt" in names and "runs/a/state/_METADATA" in names
    assert not [n for n in names if ".tmp" in n or "partial_save" in n]  # written in place, nothing staged
    _assert_equal(f"gs://{BUCKET}/runs/a", local)
    for name, value in tf1_ckpt.expected.items():  # TensorFlow's values (strings Orbax cannot store)
        if np.asarray(value).dtype.kind not in "OSU":
            np.testing.assert_array_equal(local[name], value)


def test_cli_to_gs_with_force_replaces_only_a_checkpoint_tf2flax_wrote(gcs, tf1_ckpt, local):
    url = f"gs://{BUCKET}/runs/cli"
    done = _cli("convert", tf1_ckpt.prefix, url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert url in done.stdout
    again = _cli("convert", tf1_ckpt.prefix, url)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"tf2flax: error: {url} already exists; use --force to replace it"]
    forced = _cli("convert", tf1_ckpt.prefix, url, "--force", "--dtype", "bfloat16")
    assert forced.returncode == 0, forced.stderr[-3000:]
    restored = _leaves(ocp.v1.load(url))
    assert {str(v.dtype) for n, v in restored.items() if local[n].dtype.kind == "f"} == {"bfloat16"}
    # An object the user added inside our output makes --force refuse, naming it; nothing is deleted.
    gcs.put("runs/cli/state/sub/notes.txt", b"mine")
    kept = gcs.names("runs/cli/")
    added = _cli("convert", tf1_ckpt.prefix, url, "--force")
    assert added.returncode == 2 and added.stderr.strip().splitlines() == [
        f"tf2flax: error: {url} holds 'state/sub/notes.txt', a file a conversion does not write; --force replaces "
        "only an empty directory or an Orbax checkpoint written by tf2flax: remove it yourself or choose another OUT"]
    assert gcs.names("runs/cli/") == kept and gcs.read("runs/cli/state/sub/notes.txt") == b"mine"
    # Somebody else's objects are never replaced.
    gcs.put("theirs/notes.txt", b"keep me")
    refused = _cli("convert", tf1_ckpt.prefix, f"gs://{BUCKET}/theirs", "--force")
    assert refused.returncode == 2 and "--force replaces only" in refused.stderr
    assert gcs.names("theirs/") == ["theirs/notes.txt"] and gcs.read("theirs/notes.txt") == b"keep me"


def test_gs_with_tensorflow_installed_goes_through_gcsfs(gcs, tf1_ckpt, local):
    """TensorFlow is importable here and EPATH_USE_TF is not set: etils.epath would take TensorFlow's
    gfile (which cannot reach this server: a raw TensorFlow traceback). The conversion goes through
    gcsfs instead, and never imports TensorFlow."""
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is not None
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
    url = f"gs://{BUCKET}/runs/with-tf"
    code = ("import sys, tf2flax; "
            f"print(tf2flax.convert({tf1_ckpt.prefix!r}, {url!r}).out); "
            "print('tensorflow' in sys.modules)")
    api = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert api.returncode == 0, api.stderr[-3000:]
    assert api.stdout.split() == [url, "False"]
    _assert_equal(url, local)
    cli = subprocess.run([sys.executable, "-m", "tf2flax", "convert", tf1_ckpt.prefix, url, "--force"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr[-3000:]
    _assert_equal(url, local)


def test_a_failed_gs_conversion_leaves_nothing(gcs, tf1_ckpt):
    """GCS refuses the last object Orbax writes: the error names the URL, and every object written
    before it is deleted."""
    with gcs.refusing("runs/failed/commit_success.txt"):
        with pytest.raises(StorageError, match=f"gs://{BUCKET}/runs/failed: Orbax could not write the "
                                               "checkpoint: Forbidden.*refused by the test"):
            tf2flax.convert(tf1_ckpt.prefix, f"gs://{BUCKET}/runs/failed")
    assert gcs.names("runs/failed") == []


def test_a_killed_gs_conversion_is_never_taken_for_finished(gcs, tf1_ckpt):
    """Killed (SIGKILL) while Orbax writes: the objects left have no commit_success.txt, so Orbax takes
    them for unfinished, and a new conversion refuses to overwrite them without --force."""
    url = f"gs://{BUCKET}/runs/killed"
    with gcs.holding("runs/killed/commit_success.txt") as reached:
        proc = subprocess.Popen([sys.executable, "-m", "tf2flax", "convert", tf1_ckpt.prefix, url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert reached.wait(240), "the conversion never reached its commit"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate(timeout=60)
    names = gcs.names("runs/killed/")
    assert "runs/killed/state/_METADATA" in names and "runs/killed/commit_success.txt" not in names
    assert not ocp.utils.is_checkpoint_finalized(url)
    again = _cli("convert", tf1_ckpt.prefix, url)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_gs_output_refusals(gcs, tf1_ckpt):
    """Refused before any object is written: a bucket without a directory, an output holding the
    checkpoint, s3:// (Orbax cannot write it), and a missing gcsfs (named, with the extra to install)."""
    before = gcs.names()
    with pytest.raises(UnsupportedFormatError, match=f"gs://{BUCKET}: name a directory inside the bucket"):
        tf2flax.convert(tf1_ckpt.prefix, f"gs://{BUCKET}")
    with pytest.raises(UnsupportedFormatError, match=r"s3://b/out: cannot convert to this URL: orbax-checkpoint "
                       r"0\.12 cannot write s3://"):
        tf2flax.convert(tf1_ckpt.prefix, "s3://b/out")
    for f in Path(tf1_ckpt.directory).iterdir():
        gcs.put(f"input/{f.name}", f.read_bytes())
    ckpt_url = f"gs://{BUCKET}/input/{Path(tf1_ckpt.prefix).name}"
    with pytest.raises(OutputExistsError, match="is or holds the checkpoint being converted"):
        tf2flax.convert(ckpt_url, f"gs://{BUCKET}/input")
    assert gcs.names() == sorted([*before, *(f"input/{f.name}" for f in Path(tf1_ckpt.directory).iterdir())])
    hide_gcsfs = ("import sys; sys.modules['gcsfs'] = None; from tf2flax.cli import main; "
                  f"sys.exit(main(['convert', {tf1_ckpt.prefix!r}, 'gs://{BUCKET}/runs/nogcsfs']))")
    no_gcsfs = subprocess.run([sys.executable, "-c", hide_gcsfs], capture_output=True, text=True, timeout=300)
    assert no_gcsfs.returncode == 2
    assert "writing gs:// needs gcsfs (pip install 'tf2flax[gcs]')" in no_gcsfs.stderr
    assert gcs.names("runs/nogcsfs") == []


def test_gs_to_gs(gcs, tf1_ckpt, local):
    """A checkpoint on GCS converted to GCS: nothing local on either side."""
    for f in Path(tf1_ckpt.directory).iterdir():
        gcs.put(f"source/{f.name}", f.read_bytes())
    tf2flax.convert(f"gs://{BUCKET}/source/{Path(tf1_ckpt.prefix).name}", f"gs://{BUCKET}/runs/from-gs")
    _assert_equal(f"gs://{BUCKET}/runs/from-gs", local)


def test_two_processes_write_one_gs_checkpoint(gcs, tf1_ckpt, local):
    """Two jax.distributed processes (4 CPU devices each) write their shares through Orbax's
    multi-process save; the one checkpoint equals a one-process convert."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"gs://{BUCKET}/runs/two"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "tf2flax", "convert", tf1_ckpt.prefix, url, "--distributed",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert url in outputs[0][0] and url not in outputs[1][0]  # process 0 prints the summary
    assert any(n.startswith("runs/two/state/ocdbt.process_1/") for n in gcs.names("runs/two/"))
    _assert_equal(url, local)


def test_a_gs_conversion_larger_than_memory_is_refused_before_writing(gcs, tf1_ckpt, monkeypatch):
    """One Orbax save holds the whole share: refused up front when the memory available is smaller."""
    from tf2flax.conversion import remote_out

    real = remote_out.available_memory()
    assert 1 << 20 < real < 1 << 50  # this machine's MemAvailable
    monkeypatch.setattr(remote_out, "available_memory", lambda: 1000)
    with pytest.raises(UnsupportedFormatError, match=r"gs://tf2flax-out/runs/big: writing .* to gs:// holds it in "
                                                     r"memory .* only 1.0 KB is available: run with distributed=True"):
        tf2flax.convert(tf1_ckpt.prefix, f"gs://{BUCKET}/runs/big")
    assert gcs.names("runs/big") == []

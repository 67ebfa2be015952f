"""``convert`` in a real two-process ``jax.distributed`` program on 127.0.0.1 (2 processes x 4 CPU devices).

The checkpoint is written by TF1's sharded ``Saver`` (two data files) with partitioned variables whose
TF slices do not line up with the device blocks. The two-process output must equal a one-process
convert and TensorFlow's values, each process reading about half; failures end every process with the
same line and leave no committed output.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

import tf2flax
import tf_writers

# name: (shape, partitions, axis, dtype)
SPECS = {
    "model/emb": ((4096, 256), 3, 0, np.float32),    # split by device along axis 0 (TF rows 1366/1365/1365)
    "model/proj": ((256, 1280), 3, 1, np.float32),   # split along axis 0 (the first that divides)
    "model/w": ((1004, 264), 1, 0, np.float32),     # 1004 is not divisible by 8: axis 0 split by process
    "model/odd": ((1001, 150), 1, 0, np.float32),    # no axis divides: whole, read by one process
    "model/b": ((24,), 1, 0, np.float32),            # small: whole, on one process
    "model/count": ((5,), 1, 0, np.int64),           # 64-bit dtypes stay 64-bit
    "model/scale": ((7,), 1, 0, np.float64),
}
WORKER = Path(__file__).with_name("convert_worker.py")
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def _value(name: str) -> np.ndarray:
    shape, _, _, dtype = SPECS[name]
    rng = np.random.default_rng(sum(name.encode()))
    return (rng.standard_normal(int(np.prod(shape))) * 100).astype(dtype).reshape(shape)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> str:
    T = tf_writers.tf()
    v1 = T.compat.v1
    directory = tmp_path_factory.mktemp("distributed")
    g = T.Graph()
    with g.as_default():
        for i, (name, (shape, parts, axis, dtype)) in enumerate(SPECS.items()):
            with T.device(f"/cpu:{i % 2}"):
                if parts > 1:
                    v1.get_variable(name, shape=shape, dtype=T.as_dtype(np.dtype(dtype)),
                                    initializer=tf_writers._slice_initializer(_value(name)),
                                    partitioner=v1.fixed_size_partitioner(parts, axis=axis))
                else:
                    v1.Variable(_value(name), name=name)
        with v1.Session(graph=g, config=tf_writers._graph_session_config()) as sess:
            sess.run(v1.global_variables_initializer())
            return v1.train.Saver(sharded=True).save(sess, str(directory / "model.ckpt"))


@pytest.fixture(scope="module")
def reference(ckpt_path) -> dict[str, np.ndarray]:
    reader = tf_writers.tf().train.load_checkpoint(ckpt_path)
    return {name: reader.get_tensor(name) for name in SPECS}


@pytest.fixture(scope="module")
def single(ckpt_path, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("single") / "out")
    tf2flax.convert(ckpt_path, out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(commands: list[list[str]], timeout: float = 240) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outputs)]


def _workers(ckpt: str, out: Path, results: Path, *extra: str) -> list[tuple[int, str, str]]:
    port = str(_free_port())
    return _run([[sys.executable, str(WORKER), str(i), port, ckpt, str(out), str(results), *extra] for i in range(2)])


def _cli(ckpts: list[str], out: Path, *extra: str) -> list[tuple[int, str, str]]:
    port = str(_free_port())
    return _run([[sys.executable, "-m", "tf2flax", "convert", ckpts[i], str(out), "--distributed", "--coordinator",
                  f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), *extra] for i in range(2)])


def _leaves(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _finished(directory: Path) -> list[Path]:
    """Anything under ``directory`` that Orbax would take for a finished checkpoint."""
    return [p.parent for p in directory.rglob("_CHECKPOINT_METADATA") if ".partial_save" not in str(p)]


def test_two_processes_equal_one_process_and_tensorflow(ckpt_path, reference, single, tmp_path):
    out = tmp_path / "out"
    for rc, _, err in _workers(ckpt_path, out, tmp_path):
        assert rc == 0, err[-3000:]
    # Names, shapes, dtypes and values: equal to the one-process convert and to TensorFlow's values.
    ours, theirs = _leaves(ocp.v1.load(str(out))), _leaves(ocp.v1.load(single))
    assert sorted(ours) == sorted(theirs) == sorted(SPECS)
    for name, value in ours.items():
        assert isinstance(value, np.ndarray) and value.dtype == theirs[name].dtype == reference[name].dtype, name
        np.testing.assert_array_equal(value, theirs[name])
        np.testing.assert_array_equal(value, reference[name])
    meta = ocp.v1.metadata(str(out))
    assert meta.custom_metadata == ocp.v1.metadata(single).custom_metadata
    # Each process read about half of the checkpoint.
    total = sum(v.nbytes for v in reference.values())
    shares = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
    for share in shares:
        assert share["tensors"] == len(SPECS) and share["bytes"] == total
        assert 0.4 * total <= share["bytes_read"] <= 0.6 * total, (share, total)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "result_0.json", "result_1.json"]


def test_sharding_rules_and_output_restores_with_any_sharding(ckpt_path, reference, tmp_path):
    """Placement by sharding rules over a mesh; plain Orbax restores the output onto another mesh
    (here one process, 8 devices) and without any (numpy arrays)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    out = tmp_path / "out"
    for rc, _, err in _workers(ckpt_path, out, tmp_path, "rules"):
        assert rc == 0, err[-3000:]
    for name, value in _leaves(ocp.v1.load(str(out))).items():
        np.testing.assert_array_equal(value, reference[name])
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    tree = ocp.v1.metadata(str(out)).metadata
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=NamedSharding(
        mesh, P("b", "a") if len(m.shape) == 2 and m.shape[0] % 4 == 0 and m.shape[1] % 2 == 0 else P())), tree)
    restored = _leaves(ocp.v1.load(str(out), abstract))
    np.testing.assert_array_equal(np.asarray(restored["model/emb"]), reference["model/emb"])
    assert restored["model/emb"].sharding.spec == P("b", "a")


def test_killed_process_leaves_no_committed_output(ckpt_path, tmp_path):
    out = tmp_path / "out"
    results = _workers(ckpt_path, out, tmp_path, "kill")
    assert [rc != 0 for rc, _, _ in results] == [True, True], results
    # The survivor is ended by JAX's heartbeat, which names the missing process.
    assert "1" in results[0][2] and "stopped sending heartbeats" in results[0][2], results[0][2][-2000:]
    assert not out.exists()
    assert _finished(tmp_path) == []


def test_cli_missing_shard_on_one_process_fails_every_process_alike(ckpt_path, tmp_path):
    """Process 1's copy of the checkpoint lacks a data file: both exit 2 with the same one line."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(ckpt_path).parent.iterdir():
        if not f.name.endswith("data-00001-of-00002"):
            (broken / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    results = _cli([ckpt_path, str(broken / Path(ckpt_path).name)], out)
    assert [rc for rc, _, _ in results] == [2, 2], results
    lines = [_error_lines(e) for _, _, e in results]
    assert lines[0] == lines[1] and len(lines[0]) == 1, lines
    assert lines[0][0].startswith("tf2flax: error: process 1 of 2 failed") and "data-00001-of-00002" in lines[0][0]
    assert not out.exists() and _finished(tmp_path) == []


def test_cli_two_processes_existing_out_needs_force_and_summary_from_process_0(ckpt_path, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    refused = _cli([ckpt_path, ckpt_path], out)  # each process checks its own inputs before joining
    assert [rc for rc, _, _ in refused] == [2, 2]
    assert refused[0][2].strip() == refused[1][2].strip() == (
        f"tf2flax: error: {out} already exists; use --force to replace it")
    assert out.is_dir() and not any(out.iterdir())
    results = _cli([ckpt_path, ckpt_path], out, "--force")
    assert [rc for rc, _, _ in results] == [0, 0], results
    # gloo's '[Gloo] Rank 0 is connected ...' lines (C++ std::cout, at every Orbax save) are dropped.
    assert results[0][1].splitlines() == [next(line for line in results[0][1].splitlines() if line)]
    assert results[0][1].startswith(f"converted {len(SPECS)} tensors, 7.2 MB")
    assert results[1][1] == ""
    for i, (_, _, err) in enumerate(results):
        assert len(err.splitlines()) == 2, err
        assert err.splitlines()[0].startswith("tf2flax: waiting for 2 processes at 127.0.0.1:")
        assert f"process {i}/2: read" in err.splitlines()[1]
    np.testing.assert_array_equal(_leaves(ocp.v1.load(str(out)))["model/proj"], reference["model/proj"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_quiet_is_quiet_and_debug_keeps_gloo(ckpt_path, tmp_path):
    """--quiet: nothing on stdout or stderr from any process; --debug keeps the native libraries' lines."""
    quiet = _cli([ckpt_path, ckpt_path], tmp_path / "quiet", "--quiet")
    assert [(rc, out, err) for rc, out, err in quiet] == [(0, "", ""), (0, "", "")]
    debug = _cli([ckpt_path, ckpt_path], tmp_path / "debug", "--quiet", "--debug")
    assert [rc for rc, _, _ in debug] == [0, 0], debug
    assert all(out.startswith(f"[Gloo] Rank {i} is connected") for i, (_, out, _) in enumerate(debug)), debug
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debug", "quiet"]


def test_default_placement_splits_large_leaves_contiguously_and_balances_the_rest():
    """On a (2 processes, 4 devices) mesh: first axis over all devices, else over the processes, else the
    largest axis that divides; small and indivisible leaves owned by one process, balanced by bytes."""
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    from tf2flax.conversion.distributed import default_shardings, split_spec
    from tf2flax.plan import Plan

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("process", "device"))
    every = ("process", "device")
    assert split_spec((4096, 256), 4, mesh) == P(every, None)
    assert split_spec((1004, 264), 4, mesh) == P("process", None)
    assert split_spec((3, 131072), 4, mesh) == P(None, every)
    assert split_spec((1001, 301), 4, mesh) is None          # no axis divides
    assert split_spec((8, 8), 4, mesh) is None                # small
    assert split_spec((), 4, mesh) is None

    class Entry:
        def __init__(self, shape):
            self.shape, self.dtype = shape, np.dtype(np.float32)

    entries = {"big": Entry((4096, 256)), "odd": Entry((1001, 301)), "a": Entry((300, 300)),
               "b": Entry((200, 300)), "c": Entry((100, 300))}
    shardings, owners = default_shardings(Plan(entries, None), mesh)
    assert shardings["big"].spec == P(every, None) and "big" not in owners
    assert owners == {"odd": 0, "a": 1, "b": 1, "c": 1}      # 1.2 MB vs 0.36 + 0.24 + 0.12 MB
    for path, owner in owners.items():
        first = shardings[path].mesh.devices.flat[0]          # replica 0, the one Orbax writes
        assert first == mesh.devices[owner, 0] and shardings[path].spec == P()


def _cli_each(port: int, per_process: list[list[str]], timeout: float = 240,
              prefix: list[list[str]] | None = None) -> tuple[list[tuple[int, str, str]], float]:
    """``convert ARGS --distributed`` as process i of len(per_process), each with its own arguments (and
    its own interpreter arguments ``prefix[i]``, default ``-m tf2flax``); the results and the seconds taken."""
    import time

    began = time.monotonic()
    commands = [[sys.executable, *(prefix[i] if prefix else ["-m", "tf2flax"]), "convert", *args, "--distributed",
                 "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
                for i, args in enumerate(per_process)]
    return _run(commands, timeout), time.monotonic() - began


def _error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not line.startswith("tf2flax: waiting for")]


@pytest.mark.parametrize("differ, what", [
    (["--dtype", "bfloat16"], "the plan (--map, --preset, --dtype, --names) differs"),
    (["--include-optimizer"], "the options (--force, --include-optimizer, --dry-run) differs"),
    ("map", "the plan (--map, --preset, --dtype, --names) differs"),
    ("out", "the output path (OUT) differs"),
])
def test_cli_processes_started_with_different_arguments_fail_alike_and_commit_nothing(ckpt_path, tmp_path, differ,
                                                                                       what):
    """Before, both exited 0 and committed a checkpoint mixing the two plans (or two half checkpoints)."""
    out = tmp_path / "out"
    first, second = [ckpt_path, str(out)], [ckpt_path, str(out)]
    if differ == "map":
        for i, target in enumerate(("params/", "weights/")):
            (tmp_path / f"map{i}.yaml").write_text(f"map:\n  model/: {target}\n")
        first += ["--map", str(tmp_path / "map0.yaml")]
        second += ["--map", str(tmp_path / "map1.yaml")]
    elif differ == "out":
        second[1] = str(tmp_path / "other")
    else:
        second += differ
    results, _ = _cli_each(_free_port(), [first, second])
    assert [rc for rc, _, _ in results] == [2, 2], results
    lines = [_error_lines(e) for _, _, e in results]
    assert lines[0] == lines[1] == [
        f"tf2flax: error: process 1 of 2 was started with other arguments than process 0: {what}; every process "
        "needs the same command; nothing was written"], lines
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".yaml")) == []


def test_cli_checks_its_inputs_before_joining_and_names_the_missing_processes(ckpt_path, tmp_path):
    """A process whose checkpoint does not exist fails at once, before joining; the others say whom they
    wait for, and give up within --timeout naming it (before: every process hung silently)."""
    out = tmp_path / "out"
    results, seconds = _cli_each(_free_port(), [[ckpt_path, str(out), "--timeout", "15"],
                                                [str(tmp_path / "missing"), str(out), "--timeout", "15"]])
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc1 == 2 and err1.strip().splitlines() == [
        f"tf2flax: error: {tmp_path / 'missing'}: no checkpoint here (expected {tmp_path / 'missing'}.index, or a "
        "directory)"], err1
    assert rc0 == 2, err0
    lines = err0.strip().splitlines()
    assert lines[0].startswith("tf2flax: waiting for 2 processes at 127.0.0.1:") and lines[1:] == [
        f"tf2flax: error: process 1 of 2 did not join at {lines[0].split(' at ')[1].split(' ')[0]} within 15 s (not "
        "started, failed before joining, or given another --coordinator); nothing was written"], lines
    assert seconds < 15 + 30, seconds
    assert not out.exists() and _finished(tmp_path) == []
    # Alone, a process other than 0 names the coordinator.
    port = _free_port()
    alone = _run([[sys.executable, "-m", "tf2flax", "convert", ckpt_path, str(out), "--distributed", "--coordinator",
                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1", "--timeout", "5"]])
    assert alone[0][0] == 2 and _error_lines(alone[0][2]) == [
        f"tf2flax: error: process 0 of 2 (the coordinator, at 127.0.0.1:{port}) did not answer within 5 s (not "
        "started, failed before joining, or at another address); nothing was written"], alone


_KILL_WHILE_READING = ("import os, signal, sys; from tf2flax.conversion import distributed; "
                       "distributed.Team.read = lambda self, group: os.kill(os.getpid(), signal.SIGKILL); "
                       "from tf2flax.cli import main; sys.exit(main())")


@pytest.mark.parametrize("killed", [1, 0])
def test_cli_killed_process_every_survivor_exits_with_our_line_within_the_timeout(ckpt_path, tmp_path, killed):
    """One process is killed (SIGKILL) while reading its share. Before, JAX aborted the survivors after its
    heartbeat timeout with a C++ stack; now each exits 2 with one line naming the process that stopped,
    within --timeout, and nothing is committed."""
    out = tmp_path / "out"
    prefix = [["-c", _KILL_WHILE_READING] if i == killed else ["-m", "tf2flax"] for i in range(2)]
    port = _free_port()
    results, seconds = _cli_each(port, [[ckpt_path, str(out), "--timeout", "20", "--quiet"]] * 2, prefix=prefix)
    assert [rc for rc, _, _ in results] == [2, 2], results
    survivor = _error_lines(results[1 - killed][2])
    expected = ("tf2flax: error: process 1 of 2 stopped (killed, or its host went down): JAX's heartbeat gave up on "
                "it; nothing was committed" if killed == 1 else
                f"tf2flax: error: process 0 of 2 (the coordinator, at 127.0.0.1:{port}) stopped or cannot be "
                "reached; nothing was committed")
    assert survivor == [expected], results[1 - killed][2][-3000:]
    assert _error_lines(results[killed][2]) == [
        f"tf2flax: error: process {killed} of 2 was ended by SIGKILL; nothing was committed"]
    assert seconds < 20 + 40, seconds
    assert not out.exists() and _finished(tmp_path) == []


def test_convert_in_a_distributed_program_is_distributed_without_asking(ckpt_path, reference, tmp_path):
    """tf2flax.convert(ckpt, out) in every process of a jax.distributed program (before: Orbax's bare
    'Directory path mismatch'); distributed=False there is refused in one line."""
    out = tmp_path / "out"
    for rc, _, err in _workers(ckpt_path, out, tmp_path, "auto"):
        assert rc == 0, err[-3000:]
    for name, value in _leaves(ocp.v1.load(str(out))).items():
        np.testing.assert_array_equal(value, reference[name])
    for rc, _, err in _workers(ckpt_path, tmp_path / "solo", tmp_path, "solo"):
        assert rc == 0, err[-3000:]
    for i in range(2):
        assert (tmp_path / f"error_{i}.txt").read_text() == (
            f"convert(distributed=False) in process {i} of 2 of a jax.distributed program: Orbax's save needs every "
            "process; call convert with distributed=True (or leave it out) in every process, with the same arguments")
    assert not (tmp_path / "solo").exists()


def test_rendezvous_names_the_missing_processes_on_every_process_that_came():
    """The meeting before JAX's (three processes as threads): all three meet, on IPv4 and IPv6; one missing
    is named on both others within the timeout; a different --num-processes is named on both sides."""
    import threading
    import time

    from tf2flax.conversion.launch import rendezvous
    from tf2flax.errors import DistributedError

    def meet(address: str, counts: list[int], timeout: float) -> dict[int, str]:
        out: dict[int, str] = {}

        def run(i: int) -> None:
            try:
                rendezvous(address, counts[i], i, timeout)
                out[i] = "ok"
            except DistributedError as e:
                out[i] = str(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(counts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 20)
        return out

    assert meet(f"127.0.0.1:{_free_port()}", [3, 3, 3], 30) == {0: "ok", 1: "ok", 2: "ok"}
    if socket.has_ipv6:
        assert meet(f"[::1]:{_free_port()}", [2, 2], 30) == {0: "ok", 1: "ok"}
    address = f"127.0.0.1:{_free_port()}"
    began = time.monotonic()
    missing = meet(address, [3, 3], 3)  # process 2 never comes
    assert time.monotonic() - began < 3 + 10
    assert missing == {i: f"process 2 of 3 did not join at {address} within 3 s (not started, failed before joining, "
                          "or given another --coordinator); nothing was written" for i in range(2)}
    assert meet(f"127.0.0.1:{_free_port()}", [2, 3], 10) == {i: (
        "process 1 was started with 3 processes and process 0 with 2: every process needs the same "
        "--num-processes") for i in range(2)}


def test_cli_killing_the_command_a_user_started_kills_its_conversion_too(ckpt_path, tmp_path):
    """convert --distributed runs under a supervisor: SIGKILL to the process the user started (process 1)
    takes its child with it, and process 0 exits 2 with one line naming process 1; nothing is committed."""
    import signal
    import time

    import psutil

    out = tmp_path / "out"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tf2flax", "convert", ckpt_path, str(out), "--distributed",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                               "--timeout", "20", "--quiet"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not psutil.Process(procs[1].pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = psutil.Process(procs[1].pid).children()
    assert children, "the supervisor started no child"
    time.sleep(1.0)  # (somewhere in joining or converting)
    procs[1].send_signal(signal.SIGKILL)
    _, err0 = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=60)
    psutil.wait_procs(children, timeout=30)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert procs[0].returncode == 2, err0
    lines = _error_lines(err0)
    assert len(lines) == 1 and lines[0].startswith("tf2flax: error: process 1 of 2 "), err0
    assert not out.exists() and _finished(tmp_path) == []


def test_a_peer_killed_while_registering_is_named_when_there_are_two():
    """JAX's RegisterTask failure does not say who is missing; with two processes it can only be the other
    (the killed-supervisor test above met this when the kill landed before process 1 registered)."""
    from tf2flax.conversion.supervise import why_ended

    message = "Check failed: RegisterTask ... DEADLINE_EXCEEDED: Barrier timed out"
    assert why_ended(message, 0, 2, "127.0.0.1:1234").startswith(
        "process 1 of 2 did not join JAX's coordination service at 127.0.0.1:1234 in time")
    assert why_ended(message, 1, 2, None).startswith("process 0 of 2 did not join")
    assert why_ended(message, 0, 4, None).startswith("not every process joined in time")

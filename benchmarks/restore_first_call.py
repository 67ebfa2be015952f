"""Sharded restore as users meet it: the first call in a fresh process, and N calls in one process.

Writes a TF2 checkpoint of 12 float32 ``[4096, 6144]`` tensors (1.2 GB; ``--size-gb`` scales the
rows) with TensorFlow, and its twin, the same tensors in one ``model.safetensors`` file written
with the ``safetensors`` library. Then, with 8 CPU devices and every leaf ``P("data", "model")`` on a
(4, 2) mesh, it starts one fresh process per measurement, methods taking turns for ``--rounds``
rounds:

- ``tf2flax``: ``tf2flax.init_params(prefix, mapping, abstract)`` (CRC32C verified, the default);
- ``tf``: ``tf.train.load_checkpoint(prefix).get_tensor(name)`` + ``jax.device_put(value, sharding)``;
- ``orbax``: Orbax's safetensors layout (``ocp.load`` under ``CheckpointLayout.SAFETENSORS``,
  ``abstract_state`` carrying the same shardings) loading the twin.

Each child times only the call (imports, mesh and abstract tree come first), and reports wall
seconds, user and system CPU seconds and minor page faults (``getrusage`` deltas over the call)
and its peak resident memory (``VmHWM``) as JSON. The summary gives each method's medians and the
ratios against the anchors from the same run. One more process per ``--calls-methods`` method
makes ``--calls`` calls in a row (each call's result dropped before the next, as a loop over
checkpoints does) and prints every call's time and the slowest/fastest ratio.

The first round's children also hash what they loaded (after timing) and the parent checks that
every method loaded the same bytes onto the same devices.

Usage: python benchmarks/restore_first_call.py [--size-gb 1.208] [--rounds 5] [--calls 6] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from memory import peak_rss, rss  # noqa: E402
from versions import versions  # noqa: E402

N_TENSORS = 12
COLS = 6144
METHODS = ("tf2flax", "tf", "orbax")
LABELS = {
    "tf2flax": "tf2flax.init_params",
    "tf": "TF get_tensor + jax.device_put",
    "orbax": "Orbax SafetensorsLayout (ocp.load)",
}


def shape_for(size_gb: float) -> tuple[int, int]:
    """[rows, 6144] per tensor so that 12 of them make about ``size_gb`` GB; rows a multiple of 8
    (1.208 GB: [4096, 6144])."""
    rows = max(8, round(size_gb * 1e9 / N_TENSORS / COLS / 4 / 8) * 8)
    return rows, COLS


def write(directory: Path, size_gb: float) -> tuple[str, Path]:
    """The TF checkpoint prefix and the safetensors file (reused when a finished pair is there)."""
    shape = shape_for(size_gb)
    tag = f"{shape[0]}x{shape[1]}"
    prefix, twin = directory / tag / "ckpt", directory / tag / "safetensors" / "model.safetensors"
    done = directory / tag / "done"
    if done.exists():
        return str(prefix), twin
    shutil.rmtree(directory / tag, ignore_errors=True)
    twin.parent.mkdir(parents=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    values = {f"w{i:02d}": rng.standard_normal(shape, dtype=np.float32) for i in range(N_TENSORS)}
    tf.train.Checkpoint(**{k: tf.Variable(v) for k, v in values.items()}).write(str(prefix))
    save_file(values, str(twin))
    done.write_text("ok\n")
    return str(prefix), twin


# ---- the child: one method, one fresh process ------------------------------------------------

def child(method: str, prefix: str, twin: str, calls: int, digest: bool) -> dict:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", "model"))
    with open(prefix + ".shape") as f:
        shape = tuple(json.load(f))
    names = [f"w{i:02d}" for i in range(N_TENSORS)]
    abstract = {n: jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding) for n in names}

    if method == "tf2flax":
        import tf2flax

        mapping = {f"{n}/.ATTRIBUTES/VARIABLE_VALUE": n for n in names}

        def load():
            return tf2flax.init_params(prefix, mapping, abstract, progress=False)
    elif method == "tf":
        import tensorflow as tf

        def load():
            reader = tf.train.load_checkpoint(prefix)
            return {n: jax.device_put(reader.get_tensor(f"{n}/.ATTRIBUTES/VARIABLE_VALUE"), sharding) for n in names}
    else:
        from orbax.checkpoint import v1 as ocp

        context = ocp.Context(checkpoint_layout=ocp.options.CheckpointLayout.SAFETENSORS)

        def load():
            with context:
                return ocp.load(Path(twin).parent, abstract_state=abstract)

    results = []
    baseline = rss()
    for _ in range(calls):
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        params = jax.block_until_ready(load())
        wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
        results.append({"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
                        "minflt": after.ru_minflt - before.ru_minflt, "majflt": after.ru_majflt - before.ru_majflt})
        if len(results) < calls:
            del params
    out = {"calls": results, "peak_rss": peak_rss(), "baseline_rss": baseline}
    if digest:
        import hashlib

        out["digest"] = {n: [[str(s.device), hashlib.sha1(np.asarray(s.data).tobytes()).hexdigest()]
                             for s in sorted(params[n].addressable_shards, key=lambda s: s.device.id)]
                         for n in names}
    return out


def run_child(method: str, prefix: str, twin: Path, calls: int = 1, digest: bool = False) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", method, prefix, str(twin), str(calls), str(int(digest)), out.name]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{method} child failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
        return json.loads(Path(out.name).read_text())


# ---- the parent: rounds, medians, ratios ------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.208,
                        help="checkpoint size in GB (default 1.208: 12 x [4096, 6144])")
    parser.add_argument("--rounds", type=int, default=5, help="fresh-process rounds, methods alternating (default 5)")
    parser.add_argument("--calls", type=int, default=6, help="calls in one process (default 6)")
    parser.add_argument("--methods", default=",".join(METHODS), help="first-call methods (default: all three)")
    parser.add_argument("--calls-methods", default="tf2flax", help="methods measured with --calls in one process")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "tf2flax-bench-first-call")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the checkpoints")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, prefix, twin, calls, digest, out = args.child
        Path(out).write_text(json.dumps(child(method, prefix, twin, int(calls), digest == "1")))
        return {}

    methods = [m for m in args.methods.split(",") if m]
    calls_methods = [m for m in args.calls_methods.split(",") if m]
    load_before = os.getloadavg()
    try:
        prefix, twin = write(args.dir, args.size_gb)
        shape = shape_for(args.size_gb)
        Path(prefix + ".shape").write_text(json.dumps(shape))
        nbytes = N_TENSORS * shape[0] * shape[1] * 4
        for path in [*Path(prefix).parent.glob("ckpt*"), twin]:  # page cache warm for every method alike
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass
        first: dict[str, list[dict]] = {m: [] for m in methods}
        digests = {}
        for r in range(args.rounds):
            for m in (methods if r % 2 == 0 else methods[::-1]):
                got = run_child(m, prefix, twin, digest=r == 0)
                first[m].append({**got["calls"][0], "peak_rss": got["peak_rss"], "baseline_rss": got["baseline_rss"]})
                if "digest" in got:
                    digests[m] = got["digest"]
                print(f"  round {r + 1}/{args.rounds} {m:8s} {got['calls'][0]['wall']:.3f} s", file=sys.stderr)
        if len({json.dumps(d, sort_keys=True) for d in digests.values()}) > 1:
            raise SystemExit(f"methods loaded different bytes: {sorted(digests)}")
        repeated = {m: run_child(m, prefix, twin, calls=args.calls)["calls"] for m in calls_methods}
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    load_after = os.getloadavg()
    summary = report(first, repeated, nbytes, args, load_before, load_after)
    return summary


def report(first: dict, repeated: dict, nbytes: int, args: argparse.Namespace, load_before, load_after) -> dict:
    med = {m: {k: statistics.median(x[k] for x in runs) for k in ("wall", "user", "sys", "minflt", "peak_rss")}
           for m, runs in first.items() if runs}
    rows, cols = shape_for(args.size_gb)
    print(versions())
    print(f"checkpoint: {N_TENSORS} float32 [{rows}, {cols}] tensors, {nbytes / 1e9:.2f} GB (TF2 bundle; "
          f"safetensors twin for Orbax); 8 CPU devices, P('data', 'model') on a (4, 2) mesh; page cache warm")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} cores; above ~1 the machine was busy and timings are noisy)")
    print(f"\nfirst call in a fresh process, median of {args.rounds} rounds (methods alternating); "
          "getrusage over the call, peak RSS = VmHWM of the process")
    print(f"  {'method':36s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'minflt':>8s} {'peak RSS':>9s}  all walls")
    for m, runs in first.items():
        if not runs:
            continue
        d = med[m]
        walls = " ".join(f"{x['wall']:.2f}" for x in runs)
        print(f"  {LABELS[m]:36s} {d['wall']:7.3f} {d['user']:7.2f} {d['sys']:7.2f} {d['minflt']:8.0f} "
              f"{d['peak_rss'] / 1e9:7.2f} GB  {walls}")
    out = {"median": med}
    if "tf2flax" in med:
        ours = med["tf2flax"]["wall"]
        for m, goal in (("tf", 1.5), ("orbax", 2.0)):
            if m in med:
                ratio = med[m]["wall"] / ours
                out[f"ratio_{m}"] = ratio
                print(f"  tf2flax is {ratio:.2f}x {LABELS[m]} (median wall, goal >= {goal}x: "
                      f"{'met' if ratio >= goal else 'NOT met'})")
    for m, calls in repeated.items():
        walls = [c["wall"] for c in calls]
        spread = max(walls) / min(walls)
        out[f"spread_{m}"] = spread
        print(f"\n{len(calls)} calls of {LABELS[m]} in one process (each result dropped before the next):")
        print(f"  {'call':>4s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'minflt':>8s}")
        for i, c in enumerate(calls, 1):
            print(f"  {i:4d} {c['wall']:7.3f} {c['user']:7.2f} {c['sys']:7.2f} {c['minflt']:8d}")
        print(f"  slowest / fastest = {spread:.2f}x (goal <= 2x: {'met' if spread <= 2 else 'NOT met'})")
        if len(walls) > 2:
            later = max(walls[1:]) / min(walls[1:])
            out[f"drift_{m}"] = later
            print(f"  calls 2-{len(walls)}: slowest / fastest = {later:.2f}x; the first call pays the fresh pages "
                  f"of its blocks ({calls[0]['minflt']} faults, {calls[0]['sys']:.2f} s system), "
                  "later calls reuse them")
    return out


if __name__ == "__main__":
    main()

"""Read throughput from local HTTP and S3 servers against local files, in one run.

Writes (once; reused afterwards) a TF2 checkpoint of 16 float32 variables, ``--size-gb`` GiB in all,
then serves its directory from servers on 127.0.0.1, each in its own process so that it does not
compete with the reader for the GIL: the Range-honouring HTTP server of the tests
(``tests/servers.py``, ``sendfile``), the same with ``--latency-ms`` added to every answer (a
distant server's time to first byte), and moto's S3 server (the checkpoint uploaded with boto3).
For each way in (local files, ``file://`` through tensorstore, ``http://``, ``http://`` with
latency, ``s3://``) it prints the best-of-N GB/s of:

- tensors: ``open_checkpoint`` + ``read`` of every tensor, one after another (CRC32C verified);
- tensors x4: the same with 4 threads, as ``init_params`` reads;
- raw, chunk C: ``store.read_into`` of the whole data file, split into C-byte ranges fetched
  concurrently (``unchunked``: one request), within tf2flax's default bytes-in-flight budget.

The servers share the machine's cores with the reader. moto copies a whole object to answer each
range request, so its small-chunk numbers measure moto (``s3://`` is timed once, not best-of-N).

Usage: python benchmarks/remote_throughput.py [--size-gb 0.5] [--dir /tmp/tf2flax-bench/remote]
       [--repeats 3] [--chunks-mb 4,8,16,64] [--ways local,file,http,far,s3] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import servers  # noqa: E402  (the test servers)
import tf_writers  # noqa: E402  (the TF-backed writers shared with the test suite)

from tf2flax.formats.v2 import V2Checkpoint  # noqa: E402
from tf2flax.storage import KvStore, LocalStore  # noqa: E402

BUCKET = "tf2flax-bench"


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """A server from tests/servers.py in a child process; returns it and its URL."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "servers.py"), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise RuntimeError(f"server {args} did not start")
    return proc, line[1]


def read_tensors(ckpt: Checkpoint, threads: int) -> int:
    if threads == 1:
        return sum(ckpt.read(n).nbytes for n in ckpt.names)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda n: ckpt.read(n).nbytes, ckpt.names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5, help="checkpoint size in GiB (default 0.5)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tf2flax-bench/remote"),
                        help="where the checkpoint is written (reused when present)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--chunks-mb", default="4,8,16,64", help="chunk sizes to compare for raw reads (MiB)")
    parser.add_argument("--ways", default="local,file,http,far,s3",
                        help="which of local,file,http,far (http with latency),s3 to measure")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="time to first byte of the 'far' HTTP server (default 20 ms)")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    t0 = time.perf_counter()
    prefix = Path(tf_writers.write_large(args.dir / f"large-{args.size_gb:g}", args.size_gb))
    directory, name = prefix.parent, prefix.name
    data = sorted(f.name for f in directory.iterdir() if f.name.startswith(name + ".data-"))
    total = sum((directory / f).stat().st_size for f in data)
    console.print(f"checkpoint ready in {time.perf_counter() - t0:.1f} s: {prefix} ({total / 2**30:.2f} GiB)")

    env = dict(servers.S3_ENV)
    os.environ.update(env)
    http_proc, http_url = start_server("http", str(directory))
    far_proc, far_url = start_server("http", str(directory), str(args.latency_ms / 1000))
    s3_proc, s3_endpoint = start_server("s3")
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    try:
        t0 = time.perf_counter()
        import boto3

        client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=env["AWS_REGION"],
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        for f in sorted(directory.iterdir()):
            if f.is_file() and f.name.startswith(name):
                client.upload_file(str(f), BUCKET, f"run/{f.name}")
        console.print(f"uploaded to moto S3 in {time.perf_counter() - t0:.1f} s")

        ways = {
            "local files": lambda chunk=None: LocalStore(str(directory)),
            "file:// (tensorstore)": lambda chunk=None: KvStore(directory.as_uri() + "/", chunk_bytes=chunk),
            "http://": lambda chunk=None: KvStore(http_url, chunk_bytes=chunk),
            f"http://, +{args.latency_ms:g} ms": lambda chunk=None: KvStore(far_url, chunk_bytes=chunk),
            "s3://": lambda chunk=None: KvStore(f"s3://{BUCKET}/run/", chunk_bytes=chunk),
        }
        keys = dict(zip(ways, ("local", "file", "http", "far", "s3")))
        ways = {label: make for label, make in ways.items() if keys[label] in args.ways.split(",")}
        chunks = [("unchunked", 1 << 40)] + [(f"{c} MiB", int(c) << 20) for c in args.chunks_mb.split(",")]
        columns = ["tensors", "tensors x4"] + [f"raw, {label}" for label, _ in chunks]
        table = Table(title=f"Read throughput, GB/s ({total / 1e9:.2f} GB, best of {args.repeats}, "
                            f"{os.cpu_count()} cores shared with the servers)")
        table.add_column("from")
        for c in columns:
            table.add_column(c, justify="right")
        buf = np.ones(max((directory / f).stat().st_size for f in data), np.uint8)  # pages mapped: no first-touch faults
        for label, make in ways.items():
            repeats = 1 if label == "s3://" else args.repeats
            row = []
            ckpt = V2Checkpoint(make(), name)
            for threads in (1, 4):
                seconds = best_of(repeats, lambda: read_tensors(ckpt, threads))
                row.append(f"{total / seconds / 1e9:.2f}")
            for chunk_label, chunk in chunks:
                if label == "local files" and chunk_label != "unchunked":
                    row.append("-")  # os.preadv into the buffer: nothing to split
                    continue
                store = make(chunk)

                def raw():
                    for f in data:
                        size = (directory / f).stat().st_size
                        store.read_into(f, 0, memoryview(buf)[:size])

                seconds = best_of(repeats, raw)
                row.append(f"{total / seconds / 1e9:.2f}")
            table.add_row(label, *row)
            console.print(f"  {label}: {' | '.join(row)}")
        console.print(table)
    finally:
        for proc in (http_proc, far_proc, s3_proc):
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

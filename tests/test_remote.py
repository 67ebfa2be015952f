"""Checkpoints read from s3://, http://, gs:// and file:// URLs through tensorstore.

Every test talks to a real server on 127.0.0.1 started here (see ``servers.py``): moto's S3 server,
an HTTP server that honours Range requests and counts the bytes it sends, and the same HTTP server
speaking Google Cloud Storage's JSON API. Nothing in the I/O layer is mocked.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tf2flax
import tf_writers
from servers import S3_ENV, MotoS3, RangeHTTPServer
from tf2flax.errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError, UnsupportedFormatError
from tf2flax.storage import KvStore, _ByteBudget, kvstore_spec, redact_url

BUCKET = "tf2flax-ckpts"


@pytest.fixture(scope="module", autouse=True)
def fast_retries():
    """Few, quick retries: a failing test must fail in seconds, not after tensorstore's 15 minutes."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TF2FLAX_RETRIES", "3")
    mp.setenv("TF2FLAX_RETRY_DELAY", "0.05")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory):
    """TF-written (SaveV2) tensors of 0.1-2 MiB under 'model/', and a TF-written state file.

    ``update_checkpoint_state`` records the prefix as an absolute local path, as TF1's Saver does:
    resolving the directory by URL must fall back to the same file name beside the state file.
    """
    d = tmp_path_factory.mktemp("remote_big")
    rng = np.random.default_rng(11)
    tensors = {
        "model/emb": rng.standard_normal((1024, 512)).astype(np.float32),
        "model/proj": rng.standard_normal((256, 640)).astype(np.float32),
        "model/w": rng.standard_normal((128, 256)).astype(np.float32),
        "model/b": rng.standard_normal((256,)).astype(np.float32),
    }
    prefix = tf_writers.write_raw_bundle(d / "model.ckpt-5", tensors)
    tf_writers.tf().compat.v1.train.update_checkpoint_state(str(d), prefix)
    assert str(d) in (d / "checkpoint").read_text()
    return d, tensors


@pytest.fixture(scope="module")
def served(tmp_path_factory, tf1_ckpt, tf2_ckpt, big_ckpt):
    """One directory holding copies of the test checkpoints: tf1/, tf2/, big/."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(tf1_ckpt.directory, root / "tf1")
    shutil.copytree(tf2_ckpt.directory, root / "tf2")
    shutil.copytree(big_ckpt[0], root / "big")
    return root


@pytest.fixture(scope="module")
def http(served):
    with RangeHTTPServer(served) as server:
        yield server


@pytest.fixture()
def http_log(http):
    http.reset()
    http.denied = ()
    http.misbehave = ""
    http.fail_next(0)
    yield http
    http.misbehave = ""
    http.denied = ()


@pytest.fixture(scope="module")
def s3(served):
    mp = pytest.MonkeyPatch()
    with MotoS3() as server:
        for key, value in S3_ENV.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "TF2FLAX_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint)
        for sub in ("tf1", "tf2", "big"):
            server.upload_dir(BUCKET, served / sub, sub + "/")
        server.upload_dir("tf2flax-root", served / "tf2")  # a checkpoint at a bucket's root
        client = server.client()
        client.create_bucket(Bucket="tf2flax-private")
        client.upload_file(str(served / "big" / "checkpoint"), "tf2flax-private", "run/checkpoint")
        client.put_bucket_policy(Bucket="tf2flax-private", Policy=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", '
            '"Resource": ["arn:aws:s3:::tf2flax-private", "arn:aws:s3:::tf2flax-private/*"]}]}'))
        yield server
    mp.undo()


def _assert_same(ckpt, local_dir):
    """``ckpt`` (remote) lists and reads exactly what the same checkpoint does from local files."""
    local = tf2flax.open_checkpoint(local_dir)
    assert ckpt.prefix == local.prefix
    assert ckpt.list_variables() == local.list_variables()
    for name in local.names:
        a, b = ckpt.read(name), local.read(name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype == object:
            assert a.tolist() == b.tolist(), name
        else:
            assert a.tobytes() == b.tobytes(), name


# ---- kvstore_spec --------------------------------------------------------------------------------

def test_kvstore_spec_schemes_and_s3_environment(monkeypatch):
    for key in ("TF2FLAX_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    assert kvstore_spec("gs://bucket-a/run/") == {"driver": "gcs", "bucket": "bucket-a", "path": "run/"}
    assert kvstore_spec("http://127.0.0.1:8000/a/b/") == {"driver": "http", "base_url": "http://127.0.0.1:8000",
                                                          "path": "/a/b/"}
    assert kvstore_spec("file:///tmp/x/") == {"driver": "file", "path": "/tmp/x/"}
    assert kvstore_spec("s3://bucket-a/run/") == {"driver": "s3", "bucket": "bucket-a", "path": "run/"}

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1/")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    spec = kvstore_spec("s3://bucket-a/run/")
    assert spec["endpoint"] == "http://generic:1" and spec["aws_region"] == "eu-west-1"
    assert "aws_credentials" not in spec  # the default chain: ~/.aws, instance role, ...
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    spec = kvstore_spec("s3://bucket-a/run/")
    assert (spec["endpoint"], spec["aws_region"]) == ("http://s3-specific:2", "ap-south-1")
    assert spec["aws_credentials"] == {"type": "environment"}
    monkeypatch.setenv("TF2FLAX_S3_ENDPOINT", "http://ours:3")
    monkeypatch.setenv("AWS_PROFILE", "work")
    spec = kvstore_spec("s3://bucket-a/run/")
    assert spec["endpoint"] == "http://ours:3" and "aws_credentials" not in spec

    with pytest.raises(StorageError, match="s3://x/"):
        kvstore_spec("s3://x/")  # not a valid bucket name


# ---- S3 (moto) -----------------------------------------------------------------------------------

def test_s3_directory_via_state_file_lists_and_reads_everything(s3, served):
    ckpt = tf2flax.open_checkpoint(f"s3://{BUCKET}/tf2/")
    assert ckpt.path == f"s3://{BUCKET}/tf2/ckpt-2"
    _assert_same(ckpt, served / "tf2")


def test_s3_tf1_partitioned_and_every_spelling_of_the_path(s3, served):
    _assert_same(tf2flax.open_checkpoint(f"s3://{BUCKET}/tf1/"), served / "tf1")
    prefix = tf2flax.open_checkpoint(served / "tf1").prefix
    for path in (f"s3://{BUCKET}/tf1", f"s3://{BUCKET}/tf1/{prefix}", f"s3://{BUCKET}/tf1/{prefix}.index"):
        assert tf2flax.open_checkpoint(path).path == f"s3://{BUCKET}/tf1/{prefix}", path
    assert tf2flax.list_variables(f"s3://{BUCKET}/tf1") == tf2flax.list_variables(served / "tf1")


def test_s3_bucket_root_is_a_directory(s3, served):
    for url in ("s3://tf2flax-root", "s3://tf2flax-root/"):
        ckpt = tf2flax.open_checkpoint(url)
        assert ckpt.path == "s3://tf2flax-root/ckpt-2", url
    assert ckpt.list_variables() == tf2flax.list_variables(served / "tf2")


def test_s3_state_file_with_absolute_local_path_falls_back_to_the_name_beside_it(s3, big_ckpt):
    ckpt = tf2flax.open_checkpoint(f"s3://{BUCKET}/big/")
    assert ckpt.path == f"s3://{BUCKET}/big/model.ckpt-5"
    np.testing.assert_array_equal(ckpt.read("model/w"), big_ckpt[1]["model/w"])


def test_s3_missing_checkpoint_bucket_and_denied_access_name_the_url(s3):
    with pytest.raises(CheckpointNotFoundError, match=f"s3://{BUCKET}/nothing"):
        tf2flax.open_checkpoint(f"s3://{BUCKET}/nothing/")
    with pytest.raises(CheckpointNotFoundError, match=f"s3://{BUCKET}/tf2/ckpt-9"):
        tf2flax.open_checkpoint(f"s3://{BUCKET}/tf2/ckpt-9")
    with pytest.raises(CheckpointNotFoundError, match="s3://no-such-bucket-here/run"):
        tf2flax.open_checkpoint("s3://no-such-bucket-here/run/")
    with pytest.raises(StorageError, match=r"s3://tf2flax-private/run/checkpoint: access denied.*AWS_ACCESS_KEY_ID"):
        tf2flax.open_checkpoint("s3://tf2flax-private/run/")


def test_s3_read_of_a_truncated_object_is_corrupt_not_a_crash(s3, served):
    client = s3.client()
    for name in ("checkpoint", "model.ckpt-5.index"):
        client.upload_file(str(served / "big" / name), BUCKET, f"cut/{name}")
    data = (served / "big" / "model.ckpt-5.data-00000-of-00001").read_bytes()
    client.put_object(Bucket=BUCKET, Key="cut/model.ckpt-5.data-00000-of-00001", Body=data[: len(data) // 2])
    ckpt = tf2flax.open_checkpoint(f"s3://{BUCKET}/cut/")
    info = max((ckpt.info(n) for n in ckpt.names), key=lambda i: i.stored.offset)
    with pytest.raises(CorruptCheckpointError, match=r"s3://.*/cut/model.ckpt-5.data-00000-of-00001.*truncated"):
        ckpt.read(info.name)


def test_s3_init_params_sharded_over_8_devices(s3, big_ckpt):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    tensors = big_ckpt[1]
    specs = {"emb": P("x", "y"), "proj": P(None, "y"), "w": P("x"), "b": P()}
    abstract = {"params": {k: jax.ShapeDtypeStruct(tensors[f"model/{k}"].shape, np.float32,
                                                   sharding=NamedSharding(mesh, specs[k])) for k in specs}}
    params = tf2flax.init_params(f"s3://{BUCKET}/big", {"model/": "params/"}, abstract)
    for key, spec in specs.items():
        array = params["params"][key]
        assert array.sharding == NamedSharding(mesh, spec)
        np.testing.assert_array_equal(np.asarray(array), tensors[f"model/{key}"])


def test_s3_convert_to_orbax(s3, big_ckpt, tmp_path):
    import orbax.checkpoint as ocp

    result = tf2flax.convert(f"s3://{BUCKET}/big/", tmp_path / "out", mapping={"model/": "params/"})
    assert result.tensors == 4
    restored = ocp.StandardCheckpointer().restore(tmp_path / "out" / "state")
    for key, value in big_ckpt[1].items():
        np.testing.assert_array_equal(np.asarray(restored["params"][key.split("/")[1]]), value)


def test_s3_output_is_refused_up_front_and_nothing_is_written(s3, served):
    """Orbax 0.12 cannot write s3://: the CLI says so in one line (exit 2) before reading or writing."""
    before = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    out = subprocess.run([sys.executable, "-m", "tf2flax", "convert", str(served / "tf2"), f"s3://{BUCKET}/orbax/"],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith(f"tf2flax: error: s3://{BUCKET}/orbax/: cannot convert to this URL: "
                                         "orbax-checkpoint 0.12 cannot write s3://"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])} == before


def test_s3_cli_ls(s3, served):
    out = subprocess.run([sys.executable, "-m", "tf2flax", "ls", f"s3://{BUCKET}/tf2/"],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    for name, _ in tf2flax.list_variables(served / "tf2"):
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            assert name.split("/")[0] in out.stdout


# ---- HTTP ----------------------------------------------------------------------------------------

def test_http_directory_and_prefix(http_log, served):
    _assert_same(tf2flax.open_checkpoint(http_log.url + "tf2/"), served / "tf2")
    _assert_same(tf2flax.open_checkpoint(http_log.url + "tf1"), served / "tf1")
    assert tf2flax.open_checkpoint(http_log.url + "big/model.ckpt-5.index").prefix == "model.ckpt-5"


def test_http_region_read_transfers_the_region_not_the_file(http_log, big_ckpt):
    ckpt = tf2flax.open_checkpoint(http_log.url + "big/model.ckpt-5")
    data_file = ".data-00000-of-00001"
    assert http_log.bytes_of(data_file) == 0  # opening reads the index only
    emb = big_ckpt[1]["model/emb"]
    region = (slice(256, 768), slice(None))  # rows 256..767: one contiguous 1 MiB run
    np.testing.assert_array_equal(ckpt.read("model/emb", region), emb[region])
    needed = emb[region].nbytes
    assert http_log.bytes_of(data_file) == needed == ckpt.stats.bytes_read
    file_size = (Path(big_ckpt[0]) / f"model.ckpt-5{data_file}").stat().st_size
    assert needed < 0.4 * file_size
    assert all(r.range for r in http_log.log if r.path.endswith(data_file))

    http_log.reset()
    before = ckpt.stats.bytes_read
    block = (slice(100, 300), slice(128, 384))  # rows of 1 KiB runs: fetched as their bounding range
    np.testing.assert_array_equal(ckpt.read("model/emb", block), emb[block])
    sent = http_log.bytes_of(data_file)
    assert sent == ckpt.stats.bytes_read - before
    assert emb[block].nbytes <= sent <= 200 * 512 * 4  # at most the 200 whole rows, never the file


class _PeakBudget(_ByteBudget):
    """The budget, remembering the most bytes it ever let be in flight."""

    peak = 0

    def try_acquire(self, n: int) -> bool:
        taken = super().try_acquire(n)
        self.peak = max(self.peak, self.used)
        return taken

    def acquire(self, n: int) -> None:
        super().acquire(n)
        self.peak = max(self.peak, self.used)


def test_http_large_read_is_split_into_concurrent_ranges_within_the_budget(http_log, served, big_ckpt):
    store = KvStore(http_log.url + "big/", chunk_bytes=64 << 10, inflight_bytes=256 << 10)
    name = "model.ckpt-5.data-00000-of-00001"
    data = (served / "big" / name).read_bytes()
    length = len(data) - 1007
    assert length > 2_000_000
    out = bytearray(length)
    store.read_into(name, 1000, memoryview(out))
    assert bytes(out) == data[1000:1000 + length]
    requests = [r for r in http_log.log if r.path.endswith(name)]
    assert len(requests) == math.ceil(length / (64 << 10))
    assert {r.status for r in requests} == {206}
    # 256 KiB in flight / 64 KiB ranges; the server may count one more: a handler that sent its last
    # byte leaves only after the client, which had them all, started the next range.
    assert http_log.max_concurrent <= 4 + 1
    assert store._budget.used == 0
    assert store.read(name, 10, 200_010) == data[10:200_010]  # read() above chunk_bytes: the same path

    # Threads share the budget: many concurrent readers never exceed it, and all get their bytes.
    http_log.reset()
    shared = _PeakBudget(192 << 10)
    store._budget = shared
    errors = []

    def reader(i):
        try:
            buf = bytearray(500_000)
            store.read_into(name, i * 100_000, memoryview(buf))
            assert bytes(buf) == data[i * 100_000:i * 100_000 + 500_000]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert 64 << 10 < shared.peak <= 192 << 10 and shared.used == 0  # concurrent, three 64 KiB ranges at most
    assert http_log.max_concurrent <= 3 + 1  # the server's count lags by one handler at most (see above)


def test_http_error_in_a_chunked_read_returns_the_budget(http_log, served):
    store = KvStore(http_log.url + "big/", chunk_bytes=64 << 10, inflight_bytes=256 << 10)
    name = "model.ckpt-5.data-00000-of-00001"
    size = (served / "big" / name).stat().st_size
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        store.read_into(name, size - 100_000, memoryview(bytearray(300_000)))
    assert store._budget.used == 0


def test_http_transient_errors_are_retried(http_log, big_ckpt):
    ckpt = tf2flax.open_checkpoint(http_log.url + "big/")
    http_log.reset()
    http_log.fail_next(2)  # 503 twice, then served (TF2FLAX_RETRIES=3 attempts)
    np.testing.assert_array_equal(ckpt.read("model/b"), big_ckpt[1]["model/b"])
    assert [r.status for r in http_log.log] == [503, 503, 206]

    http_log.fail_next(5)
    with pytest.raises(StorageError, match=r"http://127\.0\.0\.1:\d+/big/model\.ckpt-5\.data-00000-of-00001: read failed"):
        ckpt.read("model/w")

    # A burst of 503s across the concurrent ranges of one read: each range is retried, the bytes are right.
    store = KvStore(http_log.url + "big/", chunk_bytes=64 << 10, inflight_bytes=512 << 10)
    name = "model.ckpt-5.data-00000-of-00001"
    expected = store.read(name, 0, 1 << 20)
    http_log.reset()
    http_log.fail_next(6)
    assert store.read(name, 0, 1 << 20) == expected
    assert sorted(r.status for r in http_log.log) == [206] * 16 + [503] * 6
    assert store._budget.used == 0


def test_http_missing_and_denied_name_the_url(http_log):
    with pytest.raises(CheckpointNotFoundError, match=f"{http_log.url}tf2/ckpt-7"):
        tf2flax.open_checkpoint(http_log.url + "tf2/ckpt-7")
    with pytest.raises(CheckpointNotFoundError, match=f"{http_log.url}nowhere"):
        tf2flax.open_checkpoint(http_log.url + "nowhere/")
    http_log.denied = ("big/",)
    with pytest.raises(StorageError, match=f"{http_log.url}big/checkpoint: access denied"):
        tf2flax.open_checkpoint(http_log.url + "big/")


def test_http_server_that_ignores_range_gives_a_clear_error(served):
    with RangeHTTPServer(served, honour_range=False) as server:
        ckpt = tf2flax.open_checkpoint(server.url + "big/")  # index and state file: whole reads
        with pytest.raises(StorageError, match="ignores HTTP Range requests"):
            ckpt.read("model/w")


def test_unreachable_server_fails_after_retries_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StorageError, match=rf"http://127\.0\.0\.1:{port}/run/checkpoint: read failed"):
        tf2flax.open_checkpoint(f"http://127.0.0.1:{port}/run/")


def test_http_wrong_or_short_range_says_what_the_server_did(http_log, big_ckpt):
    ckpt = tf2flax.open_checkpoint(http_log.url + "big/")
    where = rf"{http_log.url}big/model\.ckpt-5\.data-00000-of-00001"
    http_log.misbehave = "short"
    with pytest.raises(StorageError, match=rf"{where}: asked for bytes (\d+)\.\.(\d+), the server returned \d+ bytes "
                                           r"\(\1\.\.\d+ of \d+\): it does not serve byte ranges correctly"):
        ckpt.read("model/w")
    http_log.misbehave = "shifted"
    with pytest.raises(StorageError, match=rf"{where}: asked for bytes (\d+)\.\.(\d+), the server returned "
                                           r"\d+ bytes \((?!\1\.\.)\d+\.\.\d+ of \d+\)"):
        ckpt.read("model/w")
    http_log.misbehave = ""
    np.testing.assert_array_equal(ckpt.read("model/w"), big_ckpt[1]["model/w"])


def test_http_truncated_file_says_where_it_ends(http_log, served):
    store = KvStore(http_log.url + "big/")
    name = "model.ckpt-5.data-00000-of-00001"
    size = (served / "big" / name).stat().st_size
    with pytest.raises(CorruptCheckpointError, match=rf"{name}: the file ends at byte {size}, bytes {size - 10}\.\."
                                                     rf"{size + 90} were needed \(truncated\?\)"):
        store.read(name, size - 10, size + 90)


_STALL_READ = """
import sys, time
import tf2flax
from tf2flax.errors import StorageError
from tf2flax.storage import KvStore

url, how = sys.argv[1], sys.argv[2]
began = time.monotonic()
try:
    if how == "parameter":
        KvStore(url, stall_timeout=1).read("model.ckpt-5.data-00000-of-00001", 0, 200_000)
    else:
        # by prefix: a state file is read by a byte range too (a bounded read), which this server stalls
        tf2flax.open_checkpoint(url + "model.ckpt-5").read("model/emb")
except StorageError as e:
    print(f"{time.monotonic() - began:.1f} s:", e)
"""


@pytest.mark.parametrize("how", ["parameter", "environment"])
def test_http_stalled_transfer_fails_after_bounded_retries_naming_the_url(served, how):
    """A server that stops sending mid-body: no byte for the stall timeout, one retry, a StorageError.

    In a new process: tensorstore sets its transport's stall timeout when it makes its first request.
    """
    env = {**os.environ, "TF2FLAX_RETRIES": "1"}
    env.pop("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", None)
    env.pop("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", None)
    if how == "environment":
        env["TF2FLAX_STALL_TIMEOUT"] = "1"
    else:
        env.pop("TF2FLAX_STALL_TIMEOUT", None)
    with RangeHTTPServer(served) as server:
        server.misbehave = "stall"
        out = subprocess.run([sys.executable, "-c", _STALL_READ, server.url + "big/", how], env=env,
                             capture_output=True, text=True, timeout=120)
        data_requests = [r for r in server.log if r.path.endswith(".data-00000-of-00001")]
    assert out.returncode == 0, out.stderr
    seconds, _, message = out.stdout.strip().partition(" s: ")
    assert re.fullmatch(rf"{server.url}big/model\.ckpt-5\.data-00000-of-00001: the server stopped sending "
                        r"\(no data for 1 s, 2 attempts\); TF2FLAX_STALL_TIMEOUT sets how long to wait", message), out
    assert float(seconds) < 60
    assert 2 <= len(data_requests) <= 2 * math.ceil((1024 * 512 * 4) / (8 << 20)) + 2  # bounded: a try, a retry


def test_a_stall_timeout_the_transport_cannot_take_is_not_silently_ignored(http_log):
    KvStore(http_log.url)  # the process's HTTP transport takes its stall timeout from the first remote store
    with pytest.warns(UserWarning, match=r"stall_timeout=7 is not applied: this process's HTTP transport already "
                                         r"waits \d+ s"):
        KvStore(http_log.url, stall_timeout=7)
    with pytest.raises(StorageError, match="stall_timeout=-1 must be a positive number of seconds"):
        KvStore(http_log.url, stall_timeout=-1)


def test_https_against_a_plain_http_server_fails_at_once(http_log, monkeypatch):
    """A TLS failure cannot be fixed by retrying: no backoff (8 retries here would take a minute)."""
    monkeypatch.setenv("TF2FLAX_RETRIES", "8")
    monkeypatch.setenv("TF2FLAX_RETRY_DELAY", "2")
    url = http_log.url.replace("http://", "https://") + "big/"
    began = time.monotonic()
    with pytest.raises(StorageError, match=rf"{url}checkpoint: read failed, not retried \(a retry cannot fix this\): "
                                           r".*SSL"):
        tf2flax.open_checkpoint(url)
    assert time.monotonic() - began < 10


def test_https_with_a_self_signed_certificate_fails_at_once(served, monkeypatch):
    monkeypatch.setenv("TF2FLAX_RETRIES", "8")
    monkeypatch.setenv("TF2FLAX_RETRY_DELAY", "2")
    with RangeHTTPServer(served, tls=True) as server:
        assert server.url.startswith("https://")
        began = time.monotonic()
        with pytest.raises(StorageError, match=rf"{server.url}big/checkpoint: read failed, not retried \(a retry "
                                               r"cannot fix this\): .*(?i:certificate)"):
            tf2flax.open_checkpoint(server.url + "big/")
        assert time.monotonic() - began < 10


# ---- no credential or signed query string is ever shown -----------------------------------------

def test_redact_url_hides_userinfo_query_and_fragment_and_clips_long_text():
    assert redact_url("https://user:pw@host:8/a/ckpt.index?X-Amz-Signature=abc&X-Amz-Date=1#tok") == \
        "https://***@host:8/a/ckpt.index?X-Amz-Signature=***&X-Amz-Date=***#***"
    assert redact_url("'gs://b/x?sig=s3cr3t': not found, and http://tok@h/y, /local/p") == \
        "'gs://b/x?sig=***': not found, and http://***@h/y, /local/p"
    assert redact_url("s3://bucket/run/ckpt-1") == "s3://bucket/run/ckpt-1"
    long = redact_url("http://h/" + "x" * 1_000_000 + "?token=s3cr3t")
    assert len(long) < 1100 and "s3cr3t" not in long and long.startswith("http://h/xxx") and long.endswith("=***")
    # A megabyte-long name beside a URL (a quadratic scan for the scheme would never finish).
    message = redact_url("n" * 1_000_000 + "0" * 1_000_000 + " in http://u:s3cr3t@h/x", limit=10**7)
    assert message.endswith(" in http://***@h/x") and len(message) == 2_000_000 + len(" in http://***@h/x")


def _secret_url(url: str) -> str:
    return url.replace("http://", "http://alice:s3cr3t@")


def _no_secret(text: str) -> None:
    assert "s3cr3t" not in text and "alice" not in text and "SIGSECRET" not in text, text


def test_every_error_that_shows_a_url_hides_its_credentials(http_log, served, tmp_path):
    base = _secret_url(http_log.url)
    assert tf2flax.open_checkpoint(base + "tf2/").path == f"{http_log.url.replace('//', '//***@')}tf2/ckpt-2"
    shown = http_log.url.replace("//", "//***@")
    cases = [
        (CheckpointNotFoundError, base + "nowhere/"),                              # no state file
        (CheckpointNotFoundError, base + "tf2/ckpt-7?sig=SIGSECRET"),               # no checkpoint here
        (CheckpointNotFoundError, base + "tf2/ckpt-7?X-Amz-Signature=SIGSECRET&X-Amz-Credential=SIGSECRET"),
    ]
    (served / "corrupt").mkdir(exist_ok=True)
    (served / "corrupt" / "checkpoint").write_text("this is { not a state file")
    (served / "elsewhere").mkdir(exist_ok=True)
    (served / "elsewhere" / "checkpoint").write_text(
        f'model_checkpoint_path: "{base}elsewhere/gone?sig=SIGSECRET"\n')
    cases += [(CorruptCheckpointError, base + "corrupt/"), (CheckpointNotFoundError, base + "elsewhere/")]
    for error, url in cases:
        with pytest.raises(error) as caught:
            tf2flax.open_checkpoint(url)
        _no_secret(str(caught.value))
        assert shown in str(caught.value), str(caught.value)

    http_log.denied = ("big/",)
    with pytest.raises(StorageError, match=rf"{re.escape(shown)}big/checkpoint: access denied") as caught:
        tf2flax.open_checkpoint(base + "big/")
    _no_secret(str(caught.value))
    http_log.denied = ()

    store = KvStore(base + "big/")
    name = "model.ckpt-5.data-00000-of-00001"
    size = (served / "big" / name).stat().st_size
    with pytest.raises(CorruptCheckpointError, match="truncated") as caught:
        store.read(name, size - 10, size + 90)
    _no_secret(str(caught.value))
    assert repr(store) == f"KvStore('{shown}big/')"

    with pytest.raises(StorageError) as caught:
        kvstore_spec("s3://bucket/run/?X-Amz-Signature=SIGSECRET")  # tensorstore's message repeats the URL
    _no_secret(str(caught.value))


def test_cli_never_prints_credentials(http_log, served, tmp_path):
    base = _secret_url(http_log.url)
    run = lambda *args: subprocess.run([sys.executable, "-m", "tf2flax", *args], capture_output=True, text=True,
                                       timeout=180, env=os.environ.copy())
    ls = run("ls", "--json", base + "tf2/")
    assert ls.returncode == 0, ls.stderr
    assert json.loads(ls.stdout)["checkpoint"] == http_log.url.replace("//", "//***@") + "tf2/ckpt-2"
    header = run("ls", base + "tf2/")
    assert header.returncode == 0 and header.stdout.splitlines()[0] == (
        "V2 checkpoint: " + http_log.url.replace("//", "//***@") + "tf2/ckpt-2"), header.stdout
    to_url = run("convert", base + "tf2/", base + "out?sig=SIGSECRET")
    assert to_url.returncode == 2 and "cannot convert to this URL" in to_url.stderr
    missing = run("ls", base + "tf2/ckpt-9?sig=SIGSECRET")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no checkpoint here" in missing.stderr
    converted = run("convert", base + "big/", str(tmp_path / "out"))
    assert converted.returncode == 0, converted.stderr
    assert "converted 4 tensors" in converted.stdout
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert b"***@127.0.0.1" in written  # the source, as recorded in the output's metadata
    for text in (ls.stdout, ls.stderr, header.stdout, header.stderr, to_url.stderr, missing.stdout, missing.stderr, converted.stdout, converted.stderr,
                 written.decode("latin-1")):
        _no_secret(text)


def test_huge_or_deep_names_give_one_short_error(http_log):
    for url in (http_log.url + "x" * 1_000_000, http_log.url + "a/" * 1000 + "x",
                http_log.url + "d/" + "z" * 1_000_000 + "/"):
        with pytest.raises((CheckpointNotFoundError, StorageError)) as caught:
            tf2flax.open_checkpoint(url)
        assert len(str(caught.value)) < 2500 and "\n" not in str(caught.value), len(str(caught.value))
        assert http_log.url in str(caught.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_two_processes_each_fetch_only_their_half(served, big_ckpt, tmp_path):
    """Real multi-process JAX, each process reading through its own HTTP server: per-process bytes."""
    worker = Path(__file__).with_name("remote_worker.py")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    data_file = ".data-00000-of-00001"
    data_size = (served / "big" / f"model.ckpt-5{data_file}").stat().st_size
    with RangeHTTPServer(served) as s0, RangeHTTPServer(served) as s1:
        servers = [s0, s1]
        procs = [subprocess.Popen(
            [sys.executable, str(worker), str(i), str(port), servers[i].url + "big/", str(served / "big"),
             str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out
        for i, server in enumerate(servers):
            needed = int((tmp_path / f"bytes_read_{i}").read_text())
            sent = server.bytes_of(data_file)
            assert sent == needed, (i, sent, needed)
            assert 0.4 * data_size <= sent <= 0.6 * data_size, (i, sent, data_size)


# ---- GCS (the JSON API on the local HTTP server) -------------------------------------------------

@pytest.fixture(scope="module")
def gcs(tmp_path_factory, served):
    """A fake GCS at TENSORSTORE_GCS_HTTP_URL. tensorstore reads that variable once per process."""
    if os.environ.get("TENSORSTORE_GCS_HTTP_URL"):
        pytest.skip("TENSORSTORE_GCS_HTTP_URL is set outside the tests")
    root = tmp_path_factory.mktemp("gcs")
    shutil.copytree(served / "tf2", root / "tf2flax-gcs" / "run")
    mp = pytest.MonkeyPatch()
    with RangeHTTPServer(root, gcs=True) as server:
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", server.url.rstrip("/"))
        mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "test-token")
        yield server
    mp.undo()


def test_gs_url_reads_through_the_gcs_driver(gcs, served):
    ckpt = tf2flax.open_checkpoint("gs://tf2flax-gcs/run/")
    assert ckpt.path == "gs://tf2flax-gcs/run/ckpt-2"
    gcs.reset()
    _assert_same(ckpt, served / "tf2")
    assert gcs.log and all("/storage/v1/b/tf2flax-gcs/o/" in r.path for r in gcs.log)
    with pytest.raises(CheckpointNotFoundError, match="gs://tf2flax-gcs/elsewhere"):
        tf2flax.open_checkpoint("gs://tf2flax-gcs/elsewhere/")
    gcs.denied = ("tf2flax-gcs/",)
    try:
        with pytest.raises(StorageError, match=r"gs://tf2flax-gcs/run/checkpoint: access denied.*GOOGLE_APPLICATION"):
            tf2flax.open_checkpoint("gs://tf2flax-gcs/run/")
    finally:
        gcs.denied = ()


# ---- file:// -------------------------------------------------------------------------------------

def test_file_url_reads_through_tensorstore(served):
    ckpt = tf2flax.open_checkpoint((served / "tf2").as_uri() + "/")
    assert isinstance(ckpt.store, KvStore)
    _assert_same(ckpt, served / "tf2")
    with pytest.raises(CheckpointNotFoundError, match="file://"):
        tf2flax.open_checkpoint((served / "nothing").as_uri() + "/")


def test_output_url_refusal_hides_credentials_in_the_exception(tmp_path):
    from tf2flax.conversion.remote_out import check_output_url
    from tf2flax.errors import UnsupportedFormatError

    for url in ["s3://AKIA:s3cr3t@bucket/out?X-Amz-Signature=abc", "https://alice:pw@host/out?sig=xyz"]:
        with pytest.raises(UnsupportedFormatError) as caught:
            check_output_url(url, False)
        assert "s3cr3t" not in str(caught.value) and "pw@" not in str(caught.value)
        assert "abc" not in str(caught.value) and "xyz" not in str(caught.value)

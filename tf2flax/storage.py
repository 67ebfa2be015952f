"""Where checkpoint bytes come from: local files or any tensorstore kvstore (gs://, s3://, http).

A :class:`Store` is rooted at a directory and reads byte ranges of the files in it. Local paths
use ``os.preadv`` straight into the caller's buffer, or hand out read-only views of the file mapped
into memory (:meth:`LocalStore.view`: no copy at all, see docs/performance.md for what that means
when a file changes underneath); URLs go through tensorstore's kvstore, which brings
authentication, retries and concurrent ranged reads for cloud storage.

Example::

    store, name = open_store("gs://bucket/run/model.ckpt-100.index")
    header = store.read(name, 0, 64)
"""

from __future__ import annotations

import collections
import mmap
import os
import re
import threading
from typing import Any, Protocol

from .errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError

URL_SCHEMES = ("gs://", "s3://", "http://", "https://", "file://")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL tf2flax reads through tensorstore."""
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


class Store(Protocol):
    """Byte-range reads of the files in one directory."""

    location: str

    def describe(self, name: str) -> str:
        """The full path or URL of ``name``, for messages."""

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int | None:
        """The file's size in bytes, or None when it is not cheaply known."""

    def read(self, name: str, start: int = 0, stop: int | None = None) -> bytes:
        """Bytes ``[start, stop)`` of ``name`` (to the end when ``stop`` is None)."""

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of ``name`` starting at ``offset``; error if the file is shorter."""


class LocalStore:
    """Files in a local directory, read with ``os.preadv`` into caller buffers or mapped (``view``)."""

    def __init__(self, directory: str):
        self.location = os.path.abspath(directory)
        self._fds: dict[str, int] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def describe(self, name: str) -> str:
        return os.path.join(self.location, name)

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.describe(name))

    def size(self, name: str) -> int:
        return os.fstat(self._fd(name)).st_size

    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is None:
                try:
                    fd = os.open(self.describe(name), os.O_RDONLY)
                except FileNotFoundError:
                    raise CheckpointNotFoundError(f"{self.describe(name)}: file not found") from None
                except OSError as e:
                    raise StorageError(f"{self.describe(name)}: cannot open: {e.strerror}") from None
                self._fds[name] = fd
            return fd

    def read(self, name: str, start: int = 0, stop: int | None = None) -> bytes:
        if stop is None:
            stop = self.size(name)
        buf = bytearray(max(0, stop - start))
        self.read_into(name, start, memoryview(buf))
        return bytes(buf)

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        fd = self._fd(name)
        out = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        done = 0
        while done < len(out):
            try:
                n = os.preadv(fd, [out[done:]], offset + done)
            except OSError as e:
                raise StorageError(f"{self.describe(name)}: read failed: {e.strerror}") from None
            if n == 0:
                raise CorruptCheckpointError(
                    f"{self.describe(name)}: file ends at byte {offset + done}, expected at least "
                    f"{offset + len(out)} bytes (truncated?)")
            done += n

    def view(self, name: str, start: int, stop: int) -> memoryview:
        """Bytes ``[start, stop)`` of ``name`` as a read-only view of the file mapped into memory.

        The file is mapped once, shared and read-only (``PROT_READ``, ``MAP_SHARED``): a view costs
        no copy and no memory beyond the page cache. It shows the file's bytes as they are when
        read, so a file rewritten *in place* changes the views of it, and one truncated makes
        access past its new end fault (SIGBUS). Files replaced by a rename (how TensorFlow, Orbax
        and most copy tools write) leave the mapping, and every view, on the old contents. The
        mapping is released when the store is closed and the last view of it is gone.

        Example::

            header = bytes(store.view("model.ckpt-1.data-00000-of-00001", 0, 16))
        """
        with self._lock:
            mapped = self._maps.get(name)
        if mapped is None:
            fd = self._fd(name)
            size = os.fstat(fd).st_size
            if stop > size:
                raise CorruptCheckpointError(
                    f"{self.describe(name)}: file ends at byte {size}, expected at least {stop} bytes (truncated?)")
            if size == 0:
                return memoryview(b"")
            try:
                mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except OSError as e:
                raise StorageError(f"{self.describe(name)}: cannot map: {e.strerror}") from None
            with self._lock:
                mapped = self._maps.setdefault(name, mapped)
        if stop > len(mapped):
            raise CorruptCheckpointError(
                f"{self.describe(name)}: file ends at byte {len(mapped)}, expected at least {stop} bytes (truncated?)")
        return memoryview(mapped)[start:stop]

    def release(self, name: str, start: int, stop: int) -> None:
        """Drop the pages of bytes ``[start, stop)`` of ``name`` from this process's resident memory.

        The mapping is shared and read-only, so this loses nothing: the page cache keeps the
        bytes, and a view that is read again maps them back. Loads call it once they have copied
        a tensor out, so resident memory holds what was loaded, not the file besides.
        """
        with self._lock:
            mapped = self._maps.get(name)
        if mapped is None or stop <= start:
            return
        lo = start - start % mmap.PAGESIZE
        hi = min(len(mapped), stop)
        try:
            mapped.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (ValueError, OSError):  # closed meanwhile, or a kernel without madvise: nothing to drop
            pass

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for mapped in self._maps.values():
                try:
                    mapped.close()
                except BufferError:  # arrays still view it: unmapped when the last one goes
                    pass
            self._maps.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass


# ----------------------------------------------------------------------------------------------
# Remote storage through tensorstore
# ----------------------------------------------------------------------------------------------

#: Large reads are split into byte ranges of this size, fetched concurrently. Larger ranges cost
#: more per byte in tensorstore's Python binding (0.4 GB/s at 32 MiB against 2.6 at 8 MiB, file://
#: one at a time, see benchmarks/remote_throughput.py); cloud stores want several MiB per request.
CHUNK_BYTES = 8 << 20
#: Bytes of remote reads in flight at once, across all threads and stores of the process.
INFLIGHT_BYTES = 256 << 20
#: Attempts per request on transient errors (tensorstore's exponential backoff from 0.5 s to 16 s).
RETRIES = 8


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise StorageError(f"environment variable {name}={value!r} is not a number") from None
    if number <= 0:
        raise StorageError(f"environment variable {name}={value!r} must be positive")
    return number


class _ByteBudget:
    """A counting limit on bytes in flight, shared by the threads that read through it."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.used = 0
        self._cond = threading.Condition()

    def try_acquire(self, n: int) -> bool:
        with self._cond:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used + n > self.limit:
                self._cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


_shared_lock = threading.Lock()
_shared_budget: _ByteBudget | None = None
_shared_contexts: dict[tuple, object] = {}


def _budget() -> _ByteBudget:
    global _shared_budget
    with _shared_lock:
        if _shared_budget is None:
            _shared_budget = _ByteBudget(int(_env_number("TF2FLAX_INFLIGHT_MB", INFLIGHT_BYTES / 2**20) * 2**20))
        return _shared_budget


def _context() -> Any:
    """One tensorstore Context per retry setting: its request-concurrency limits are shared."""
    import tensorstore as ts

    retries = max(1, int(_env_number("TF2FLAX_RETRIES", RETRIES)))
    delay = _env_number("TF2FLAX_RETRY_DELAY", 0.5)
    key = (retries, delay)
    with _shared_lock:
        context = _shared_contexts.get(key)
        if context is None:
            policy = {"max_retries": retries, "initial_delay": f"{delay:g}s", "max_delay": f"{max(delay, 16):g}s"}
            context = ts.Context({
                "http_request_retries": policy,
                "s3_request_retries": policy,
                "gcs_request_retries": policy,
            })
            _shared_contexts[key] = context
        return context


def _redact(url: str) -> str:
    """``url`` without a password in its authority (``https://user:secret@host`` -> ``https://user@host``)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user = authority.rsplit("@", 1)[0].split(":", 1)[0]
        authority = user + "@" + authority.rsplit("@", 1)[1]
    return scheme + sep + authority + slash + path


_STATUS = re.compile(r"^([A-Z_]+): ")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


def _credentials_hint(url: str) -> str:
    if url.startswith("s3://"):
        return ("S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), "
                "AWS_PROFILE or ~/.aws/credentials, or the instance's role; without s3:ListBucket, S3 also "
                "answers 403 for an object that does not exist")
    if url.startswith("gs://"):
        return ("GCS credentials come from GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default "
                "login`, or the VM's service account")
    return "the server refused the request"


class KvStore:
    """A directory in a tensorstore kvstore: ``gs://``, ``s3://``, ``http(s)://`` or ``file://``.

    Reads larger than ``chunk_bytes`` are split into byte ranges fetched concurrently; the bytes in
    flight are bounded by ``inflight_bytes`` (by default one budget, ``TF2FLAX_INFLIGHT_MB``, shared
    by every remote store of the process). Transient errors are retried by tensorstore with
    exponential backoff (``TF2FLAX_RETRIES`` attempts). Thread-safe.

    Example::

        store = KvStore("s3://bucket/run/")
        store.read("checkpoint")
    """

    def __init__(self, url: str, *, chunk_bytes: int | None = None, inflight_bytes: int | None = None):
        import tensorstore as ts

        self.location = url if url.endswith("/") else url + "/"
        self._shown = _redact(self.location)
        self.chunk_bytes = max(1, int(chunk_bytes or _env_number("TF2FLAX_CHUNK_MB", CHUNK_BYTES / 2**20) * 2**20))
        self._budget = _ByteBudget(inflight_bytes) if inflight_bytes else _budget()
        spec = kvstore_spec(self.location)
        try:
            self._kv = ts.KvStore.open(spec, context=_context()).result()
        except Exception as e:
            raise StorageError(f"{self._shown}: cannot open storage: {_short(str(e))}") from None
        self._sizes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"KvStore({self._shown!r})"

    def describe(self, name: str) -> str:
        return self._shown + name

    # ---- requests ----------------------------------------------------------------------------
    def _start(self, name: str, byte_range: slice | None = None) -> Any:
        try:
            if byte_range is None:
                return self._kv.read(name)
            return self._kv.read(name, byte_range=byte_range)
        except Exception as e:  # a malformed key or range is refused before any I/O
            raise StorageError(f"{self.describe(name)}: read failed: {_short(str(e))}") from None

    def _value(self, future: Any, name: str, byte_range: slice | None = None) -> bytes:
        try:
            result = future.result()
        except Exception as e:
            raise self._error(name, byte_range, str(e)) from None
        if result.state == "missing":
            raise CheckpointNotFoundError(f"{self.describe(name)}: not found")
        return result.value

    def _error(self, name: str, byte_range: slice | None, message: str) -> Exception:
        where = self.describe(name)
        match = _STATUS.match(message)
        status = match.group(1) if match else ""
        if status == "OUT_OF_RANGE":
            what = f"bytes {byte_range.start}..{byte_range.stop}" if byte_range is not None else "bytes"
            return CorruptCheckpointError(f"{where}: requested {what} are past the end of the file (truncated?)")
        if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            return StorageError(f"{where}: access denied ({_short(message)}); {_credentials_hint(self.location)}")
        if status == "FAILED_PRECONDITION" and "ignored by server" in message:
            return StorageError(
                f"{where}: the server ignores HTTP Range requests (it sent the whole file for a byte range); "
                "tf2flax reads checkpoints by byte range: serve them from a server that honours Range, "
                "or download them first")
        return StorageError(f"{where}: read failed: {_short(message)}")

    # ---- Store protocol ----------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        """Whether ``name`` exists (a HEAD or metadata request; access denied raises StorageError)."""
        try:
            self._value(self._start(name, slice(0, 0)), name, slice(0, 0))
            return True
        except CheckpointNotFoundError:
            return False

    def size(self, name: str) -> int | None:
        """The size of ``name`` once it has been read whole; otherwise None (it costs a request)."""
        return self._sizes.get(name)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> bytes:
        if stop is None:
            byte_range = None if start == 0 else slice(start, None)
            data = self._value(self._start(name, byte_range), name, byte_range)
            if start == 0:
                self._sizes[name] = len(data)
            return data
        if stop - start <= self.chunk_bytes:
            byte_range = slice(start, stop)
            data = self._value(self._start(name, byte_range), name, byte_range) if stop > start else b""
            if len(data) != stop - start:
                raise CorruptCheckpointError(
                    f"{self.describe(name)}: got {len(data)} bytes at offset {start}, expected {stop - start} "
                    "(truncated?)")
            return data
        buf = bytearray(stop - start)
        self.read_into(name, start, memoryview(buf))
        return bytes(buf)

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` from ``offset``: ``chunk_bytes`` ranges, concurrently, within the byte budget."""
        out = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        total = len(out)
        if total == 0:
            return
        budget = self._budget
        chunk = min(self.chunk_bytes, budget.limit)
        pending: collections.deque = collections.deque()  # (future, position in out, length)

        def finish() -> None:
            future, pos, length = pending.popleft()
            try:
                rng = slice(offset + pos, offset + pos + length)
                data = self._value(future, name, rng)
                if len(data) != length:
                    raise CorruptCheckpointError(
                        f"{self.describe(name)}: got {len(data)} bytes at offset {rng.start}, expected {length} "
                        "(truncated?)")
                out[pos:pos + length] = data
            finally:
                budget.release(length)

        pos = 0
        try:
            while pos < total:
                length = min(chunk, total - pos)
                # Never wait for budget while holding some: finish our own reads first.
                while not budget.try_acquire(length):
                    if pending:
                        finish()
                    else:
                        budget.acquire(length)
                        break
                try:
                    future = self._start(name, slice(offset + pos, offset + pos + length))
                except BaseException:
                    budget.release(length)
                    raise
                pending.append((future, pos, length))
                pos += length
            while pending:
                finish()
        finally:
            while pending:  # an error: let the other reads run out, return their budget
                future, _, length = pending.popleft()
                future.cancel()
                budget.release(length)

    def close(self) -> None:
        """Nothing to release: tensorstore pools its connections per process."""


def _short(message: str, limit: int = 400) -> str:
    """A tensorstore error message without XML bodies, cut to ``limit`` characters."""
    fields = dict(_XML_FIELD.findall(message))
    if fields:
        head = message.split(" [", 1)[0]
        message = f"{head} [{fields.get('Code', '')}: {fields.get('Message', '')}]"
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit - 3] + "..."


def kvstore_spec(url: str) -> dict:
    """The tensorstore kvstore spec (JSON) for a directory URL.

    ``gs://``, ``http(s)://`` and ``file://`` follow tensorstore's URL syntax. ``s3://`` adds, from
    the environment: the endpoint of an S3-compatible server (``TF2FLAX_S3_ENDPOINT``, else
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``), the region (``AWS_REGION``, else
    ``AWS_DEFAULT_REGION``), and, when ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` are set and
    no ``AWS_PROFILE`` is, credentials from the environment alone (what the default chain would pick,
    without its probing of ``~/.aws`` and the instance metadata service).

    Example::

        kvstore_spec("s3://bucket/run/")   # {'driver': 's3', 'bucket': 'bucket', 'path': 'run/', ...}
    """
    import tensorstore as ts

    try:
        spec = ts.KvStore.Spec(url).to_json()
    except Exception as e:
        raise StorageError(f"{_redact(url)}: not a storage URL tensorstore can open: {_short(str(e))}") from None
    if spec.get("driver") == "s3":
        env = os.environ
        endpoint = env.get("TF2FLAX_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            spec["endpoint"] = endpoint.rstrip("/")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            spec["aws_region"] = region
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY") and not env.get("AWS_PROFILE"):
            spec["aws_credentials"] = {"type": "environment"}
    return spec


def open_store(path: str) -> tuple[Store, str]:
    """Split a file path or URL into (store of its directory, file name)."""
    if is_url(path):
        directory, _, name = path.rpartition("/")
        return KvStore(directory + "/"), name
    directory, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    return LocalStore(directory), name

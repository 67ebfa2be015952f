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
import contextlib
import math
import mmap
import os
import re
import stat
import threading
import warnings
from typing import Any, Iterator, Protocol

from .errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError

URL_SCHEMES = ("gs://", "s3://", "http://", "https://", "file://")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL tf2flax reads through tensorstore."""
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


#: Longest path or URL a message shows whole; longer ones keep their start and end.
SHOWN_CHARS = 1000
# A bounded scheme, not inside a word: linear time on megabyte-long names.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s'\"<>]*[^\s'\"<>:,;.)]")


def redact_url(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` (a path, URL or message) as it may be shown: every URL in it without its userinfo and
    with its query and fragment values hidden, and the whole cut to about ``limit`` characters.

    Every message, warning and listing that shows a path or URL goes through here, so that no
    password, token or signed query string is ever printed.

    Example::

        redact_url("https://user:pw@host/ckpt.index?X-Amz-Signature=abc")
        # 'https://***@host/ckpt.index?X-Amz-Signature=***'
    """
    if "://" in text:
        text = _URL.sub(lambda m: _redact_one(m.group(0)), text)
    if len(text) > limit:
        head, tail = (limit * 2) // 3, limit // 3
        text = f"{text[:head]}...({len(text) - head - tail} characters)...{text[-tail:]}"
    return text


def _redact_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    rest, hash_, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    if query:
        query = "&".join(f"{part.partition('=')[0]}=***" if "=" in part else "***" for part in query.split("&"))
    return f"{scheme}://{authority}{slash}{path}{question}{query}{hash_}{'***' if fragment else ''}"


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


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (after symlinks).

    Opened without blocking and checked with ``fstat`` before anything is read: a FIFO, a device, a
    socket or a directory is refused at once (reading a FIFO would wait forever for a writer), with
    no window for it to be swapped in between a check and the open.

    Example::

        fd = open_regular("/runs/bert/model.ckpt-1000.index")
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: file not found") from None
    except OSError as e:
        raise StorageError(f"{path}: cannot open: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a special file")
            raise StorageError(f"{path}: is {kind}, not a regular file; checkpoint files must be regular files")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Handle:
    """One open file of a LocalStore: its descriptor, how many reads use it now, whether it is let go."""

    __slots__ = ("fd", "users", "dropped")

    def __init__(self, fd: int):
        self.fd, self.users, self.dropped = fd, 0, False


class LocalStore:
    """Files in a local directory, read with ``os.preadv`` into caller buffers or mapped (``view``).

    Thread-safe, ``close()`` included: a descriptor is closed only once no read uses it, so a read
    racing ``close()`` finishes on the file it started on (never on a descriptor the process has since
    reused for another file); a read that starts after ``close()`` raises StorageError.
    """

    def __init__(self, directory: str):
        self.location = os.path.abspath(directory)
        self._fds: dict[str, _Handle] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()
        self._closed = False

    def describe(self, name: str) -> str:
        return os.path.join(self.location, name)

    def exists(self, name: str) -> bool:
        """Whether ``name`` is there and not a directory (a FIFO or device is, and is refused on opening)."""
        path = self.describe(name)
        return os.path.exists(path) and not os.path.isdir(path)

    def size(self, name: str) -> int:
        with self._borrowed(name) as fd:
            return os.fstat(fd).st_size

    def _closed_error(self, name: str) -> StorageError:
        return StorageError(f"{self.describe(name)}: the checkpoint is closed")

    @contextlib.contextmanager
    def _borrowed(self, name: str) -> Iterator[int]:
        """The descriptor of ``name`` (opened on first use), kept open until the caller is done with it."""
        with self._lock:
            if self._closed:
                raise self._closed_error(name)
            handle = self._fds.get(name)
            if handle is None:
                handle = self._fds[name] = _Handle(open_regular(self.describe(name)))
            handle.users += 1
        try:
            yield handle.fd
        finally:
            with self._lock:
                handle.users -= 1
                if handle.dropped and handle.users == 0:
                    os.close(handle.fd)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> bytes:
        if stop is None:
            stop = self.size(name)
        buf = bytearray(max(0, stop - start))
        self.read_into(name, start, memoryview(buf))
        return bytes(buf)

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        out = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        done = 0
        with self._borrowed(name) as fd:
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
        read, so a file rewritten *in place* changes the views of it. Each view is handed out only
        after an ``fstat`` shows the file still holds ``[start, stop)``: a file truncated under an
        open store gives a CorruptCheckpointError, not a fault. A file truncated *after* a view of
        it was handed out (while it is read, or later) makes access past its new end fault
        (SIGBUS), as for any mapped file; open with ``mmap=False`` where files may shrink while in
        use. Files replaced by a rename (how TensorFlow, Orbax and most copy tools write) leave
        the mapping, and every view, on the old contents. The mapping is released when the store
        is closed and the last view of it is gone.

        Example::

            header = bytes(store.view("model.ckpt-1.data-00000-of-00001", 0, 16))
        """
        with self._borrowed(name) as fd:
            size = os.fstat(fd).st_size
            if stop > size:
                raise CorruptCheckpointError(
                    f"{self.describe(name)}: file ends at byte {size}, expected at least {stop} bytes (truncated?)")
            if stop <= start:
                return memoryview(b"")
            with self._lock:
                mapped = self._maps.get(name)
            if mapped is None or len(mapped) < stop:
                try:  # the file as it is now (it may have grown since an earlier mapping)
                    fresh = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
                except OSError as e:
                    raise StorageError(f"{self.describe(name)}: cannot map: {e.strerror}") from None
                with self._lock:
                    if self._closed:  # closed while this mapping was made: keep nothing past close()
                        fresh.close()
                        raise self._closed_error(name)
                    mapped = self._maps.get(name)
                    if mapped is None or len(mapped) < len(fresh):
                        mapped = self._maps[name] = fresh
            with self._lock:  # exported before close() can unmap it (close leaves an exported map alone)
                if self._closed:
                    raise self._closed_error(name)
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
            try:  # under the lock: close() cannot unmap it meanwhile
                mapped.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (ValueError, OSError):  # a kernel without madvise: nothing to drop
                pass

    def close(self) -> None:
        """Let go of every descriptor and mapping; reads in progress finish first, later ones raise."""
        with self._lock:
            self._closed = True
            for handle in self._fds.values():
                handle.dropped = True
                if handle.users == 0:
                    os.close(handle.fd)
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
#: Retries of a request after a transient error (tensorstore's exponential backoff from 0.5 s to 16 s).
RETRIES = 8
#: Seconds without a byte arriving before a request is abandoned as stalled (curl notices about 5 s
#: later). With ``STALL_RETRIES`` this bounds a stalled server to about 45 s with default settings.
STALL_SECONDS = 15
#: Retries of a stalled request (at most ``TF2FLAX_RETRIES``): a server that stalls tends to again.
STALL_RETRIES = 1
#: Seconds a request (its retries included) may take in all, counted from when a read waits for it:
#: a server that keeps sending a byte now and then is not stalled, but is given up on after this.
#: 8 MiB requests, 32 at once, need about 450 KB/s in all to finish in time.
REQUEST_TIMEOUT = 600
#: curl errors that a retry cannot fix: a bad URL or protocol, an unknown host, TLS handshake and
#: certificate failures (https:// against a plain HTTP server, a self-signed or expired certificate).
_PERMANENT_CURL_CODES = frozenset({1, 3, 4, 6, 35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98})
_RETRIED_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")
_CURL_CODE = re.compile(r"curl_code='(\d{1,6})'")
# Numbers of at most 20 digits (int64): int() of a server's digits is never fed thousands of them.
_RANGE_REPLY = re.compile(r"Requested byte range \[(\d{1,20}), (\d{1,20})\) was not satisfied by response with byte "
                          r"range \[(\d{1,20}), (\d{1,20})\) and total size (\d{1,20})\b")
_RANGE_INVALID = re.compile(r"Requested byte range \[(\d{1,20}), (\d{1,20})\) is not valid for value of size "
                            r"(\d{1,20})\b")


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
_transport_stall: int | None = None


def _budget() -> _ByteBudget:
    global _shared_budget
    with _shared_lock:
        if _shared_budget is None:
            _shared_budget = _ByteBudget(int(_env_number("TF2FLAX_INFLIGHT_MB", INFLIGHT_BYTES / 2**20) * 2**20))
        return _shared_budget


def _context(retries: int) -> Any:
    """One tensorstore Context per retry setting: its request-concurrency limits are shared."""
    import tensorstore as ts

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


def _configure_transport(stall_timeout: float | None) -> int:
    """Give tensorstore's HTTP transport (curl) the stall timeout; returns the one in effect.

    tensorstore reads ``TENSORSTORE_CURL_LOW_SPEED_*`` once per process, when its first HTTP, GCS
    or S3 request creates the transport: the first remote store's setting holds for the process.
    """
    global _transport_stall
    if stall_timeout is not None and not stall_timeout > 0:
        raise StorageError(f"stall_timeout={stall_timeout!r} must be a positive number of seconds")
    wanted = math.ceil(stall_timeout or _env_number("TF2FLAX_STALL_TIMEOUT", STALL_SECONDS))
    with _shared_lock:
        if _transport_stall is None:
            os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(wanted))
            os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
            setting = os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"]
            if not (setting.isascii() and setting.isdigit() and len(setting) < 10):
                raise StorageError(f"environment variable TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS={setting[:40]!r} "
                                   "is not a whole number of seconds")
            _transport_stall = int(setting)
        elif stall_timeout is not None and wanted != _transport_stall:
            warnings.warn(f"stall_timeout={stall_timeout:g} is not applied: this process's HTTP transport already "
                          f"waits {_transport_stall} s (set TF2FLAX_STALL_TIMEOUT before the first remote read)",
                          stacklevel=3)
        return _transport_stall


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


def _failure_kind(message: str) -> str:
    """'permanent', 'stall', 'connect' or 'transient' for a failed first attempt; '' when not retried at all."""
    code = _CURL_CODE.search(message)
    if code and int(code.group(1)) in _PERMANENT_CURL_CODES:
        return "permanent"
    if code and code.group(1) == "28" and "too slow" in message:
        return "stall"
    if code and code.group(1) == "28" and "Connection timed out" in message:
        return "connect"  # no connection in curl's 30 s, SYNs retransmitted all along: not retried
    match = _STATUS.match(message)
    return "transient" if match and match.group(1) in _RETRIED_STATUS else ""


class KvStore:
    """A directory in a tensorstore kvstore: ``gs://``, ``s3://``, ``http(s)://`` or ``file://``.

    Reads larger than ``chunk_bytes`` are split into byte ranges fetched concurrently; the bytes in
    flight are bounded by ``inflight_bytes`` (by default one budget, ``TF2FLAX_INFLIGHT_MB``, shared
    by every remote store of the process). Each request is tried once; an error a retry cannot fix
    (TLS, certificate, unknown host) fails at once, a stalled transfer (no byte for ``stall_timeout``
    seconds, ``TF2FLAX_STALL_TIMEOUT``, default 15) is retried ``STALL_RETRIES`` (1) time, other
    transient errors ``TF2FLAX_RETRIES`` times with exponential backoff. Thread-safe.

    tensorstore sets the stall timeout of its HTTP transport once per process, from the first remote
    store opened: a later store asking for another one gets a warning.

    Example::

        store = KvStore("s3://bucket/run/")
        store.read("checkpoint")
    """

    def __init__(self, url: str, *, chunk_bytes: int | None = None, inflight_bytes: int | None = None,
                 stall_timeout: float | None = None):
        self.location = url if url.endswith("/") else url + "/"
        self._shown = redact_url(self.location)
        self.chunk_bytes = max(1, int(chunk_bytes or _env_number("TF2FLAX_CHUNK_MB", CHUNK_BYTES / 2**20) * 2**20))
        self._budget = _ByteBudget(inflight_bytes) if inflight_bytes else _budget()
        self.stall_timeout = _configure_transport(stall_timeout)
        self.retries = max(1, int(_env_number("TF2FLAX_RETRIES", RETRIES)))
        self.request_timeout = _env_number("TF2FLAX_REQUEST_TIMEOUT", REQUEST_TIMEOUT)
        self._spec = kvstore_spec(self.location)
        self._lock = threading.Lock()
        self._kvs: dict[int, Any] = {}
        self._regular: set[str] = set()
        self._kv = self._opened(0)  # first attempts: their errors are classified before any retry
        self._sizes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"KvStore({self._shown!r})"

    def describe(self, name: str) -> str:
        return redact_url(self.location + name)

    # ---- requests ----------------------------------------------------------------------------
    def _opened(self, retries: int) -> Any:
        """The kvstore whose requests are retried ``retries`` times (opened once, on first use)."""
        import tensorstore as ts

        with self._lock:
            kv = self._kvs.get(retries)
            if kv is None:
                try:
                    kv = ts.KvStore.open(self._spec, context=_context(retries)).result()
                except Exception as e:
                    raise StorageError(f"{self._shown}: cannot open storage: {_short(str(e))}") from None
                self._kvs[retries] = kv
            return kv

    def _start(self, name: str, byte_range: slice | None = None, kv: Any = None) -> Any:
        if self._spec.get("driver") == "file" and name not in self._regular:
            # tensorstore's file driver would wait forever on a FIFO: refuse what is not a regular file.
            # (A file swapped for one after this check is not caught; local paths are immune.)
            path = os.path.join(self._spec["path"], name)
            if os.path.exists(path):
                os.close(open_regular(path))
            self._regular.add(name)
        try:
            kv = self._kv if kv is None else kv
            return kv.read(name) if byte_range is None else kv.read(name, byte_range=byte_range)
        except Exception as e:  # a malformed key or range is refused before any I/O
            raise StorageError(f"{self.describe(name)}: read failed: {_short(str(e))}") from None

    def _retried(self, future: Any, name: str, byte_range: slice | None) -> tuple[str, Any]:
        """After a failed first attempt: (kind of failure, the retried request); raises when a retry
        cannot help. The retry goes through tensorstore's backoff, concurrently with other requests."""
        message = str(future.exception())
        kind = _failure_kind(message)
        if kind not in ("stall", "transient"):
            raise self._error(name, byte_range, message, kind)
        return kind, self._start(name, byte_range, self._opened(self._retries(kind) - 1))

    def _wait(self, future: Any, name: str, byte_range: slice | None) -> None:
        """Block until ``future`` is done, at most ``request_timeout`` seconds (then cancel it and raise)."""
        try:
            future.exception(timeout=self.request_timeout)
        except TimeoutError:
            future.cancel()
            what = f" (bytes {byte_range.start}..{byte_range.stop})" if byte_range is not None else ""
            raise StorageError(f"{self.describe(name)}: no complete answer{what} within {self.request_timeout:g} s (the "
                               "server sends too slowly); TF2FLAX_REQUEST_TIMEOUT sets how long to wait") from None

    def _value(self, future: Any, name: str, byte_range: slice | None = None,
               retry: tuple[str, Any] | None = None) -> bytes:
        """The bytes a request read: its first attempt's, else its retry's (``retry``, if started)."""
        if retry is None:
            self._wait(future, name, byte_range)
        if retry is None and future.exception() is not None:
            retry = self._retried(future, name, byte_range)
        if retry is None:
            result = future.result()
        else:
            kind, again = retry
            self._wait(again, name, byte_range)
            try:
                result = again.result()
            except Exception as e:
                raise self._error(name, byte_range, str(e), kind) from None
        if result.state == "missing":
            raise CheckpointNotFoundError(f"{self.describe(name)}: not found")
        return result.value

    def _retries(self, kind: str) -> int:
        return min(STALL_RETRIES, self.retries) if kind == "stall" else self.retries

    def _error(self, name: str, byte_range: slice | None, message: str, kind: str) -> Exception:
        where = self.describe(name)
        match = _STATUS.match(message)
        status = match.group(1) if match else ""
        if status == "OUT_OF_RANGE":
            return self._range_error(where, byte_range, message)
        if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            return StorageError(f"{where}: access denied ({_short(message)}); {_credentials_hint(self.location)}")
        if status == "FAILED_PRECONDITION" and "ignored by server" in message:
            return StorageError(
                f"{where}: the server ignores HTTP Range requests (it sent the whole file for a byte range); "
                "tf2flax reads checkpoints by byte range: serve them from a server that honours Range, "
                "or download them first")
        if kind == "connect":
            return StorageError(f"{where}: the server accepted no connection ({_short(message)}); not retried")
        if "too slow" in message and "curl_code='28'" in message:
            attempts = 1 + self._retries(kind)
            return StorageError(
                f"{where}: the server stopped sending (no data for {self.stall_timeout} s, {attempts} attempts); "
                "TF2FLAX_STALL_TIMEOUT sets how long to wait")
        if kind == "permanent":
            return StorageError(f"{where}: read failed, not retried (a retry cannot fix this): {_short(message)}")
        return StorageError(f"{where}: read failed: {_short(message)}")

    @staticmethod
    def _range_error(where: str, byte_range: slice | None, message: str) -> Exception:
        """What a refused byte range means: the file is shorter, or the server answered another range."""
        reply = _RANGE_REPLY.search(message)
        invalid = _RANGE_INVALID.search(message)
        if reply:
            start, stop, got_start, got_stop, size = map(int, reply.groups())
            if got_start == start and got_stop == size < stop:
                return CorruptCheckpointError(
                    f"{where}: the file ends at byte {size}, bytes {start}..{stop} were needed (truncated?)")
            return StorageError(
                f"{where}: asked for bytes {start}..{stop}, the server returned {got_stop - got_start} bytes "
                f"({got_start}..{got_stop} of {size}): it does not serve byte ranges correctly")
        if invalid:
            start, stop, size = map(int, invalid.groups())
            return CorruptCheckpointError(
                f"{where}: the file ends at byte {size}, bytes {start}..{stop} were needed (truncated?)")
        what = f"bytes {byte_range.start}..{byte_range.stop}" if byte_range is not None else "bytes"
        return CorruptCheckpointError(
            f"{where}: {what} are past the end of the file (truncated?); the server said {_short(message)}")

    def _short_reply(self, name: str, start: int, length: int, got: int) -> StorageError:
        return StorageError(f"{self.describe(name)}: asked for bytes {start}..{start + length}, the server returned "
                            f"{got} bytes")

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
                raise self._short_reply(name, start, stop - start, len(data))
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
        pending: collections.deque = collections.deque()  # [future, position in out, length, retry]

        def finish() -> None:
            future, pos, length, retry = pending.popleft()
            try:
                rng = slice(offset + pos, offset + pos + length)
                if retry is None:
                    self._wait(future, name, rng)
                if retry is None and future.exception() is not None:  # the first attempt failed
                    for item in pending:  # those that failed with it (a burst of 503s) retry with it
                        if item[3] is None and item[0].done() and item[0].exception() is not None:
                            item[3] = self._retried(item[0], name, slice(offset + item[1], offset + item[1] + item[2]))
                    retry = self._retried(future, name, rng)
                data = self._value(future, name, rng, retry)
                if len(data) != length:
                    raise self._short_reply(name, rng.start, length, len(data))
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
                pending.append([future, pos, length, None])
                pos += length
            while pending:
                finish()
        finally:
            while pending:  # an error: let the other reads run out, return their budget
                future, _, length, retry = pending.popleft()
                future.cancel()
                if retry is not None:
                    retry[1].cancel()
                budget.release(length)

    def close(self) -> None:
        """Nothing to release: tensorstore pools its connections per process."""


def _short(message: str, limit: int = 400) -> str:
    """A tensorstore error message without XML bodies or URL credentials, cut to ``limit`` characters."""
    fields = dict(_XML_FIELD.findall(message))
    if fields:
        head = message.split(" [", 1)[0]
        message = f"{head} [{fields.get('Code', '')}: {fields.get('Message', '')}]"
    return redact_url(" ".join(message.split()), limit=limit)


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
        raise StorageError(f"{redact_url(url)}: not a storage URL tensorstore can open: {_short(str(e))}") from None
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

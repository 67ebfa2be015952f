"""Real storage servers on 127.0.0.1 for the remote-checkpoint tests and benchmarks.

* :class:`RangeHTTPServer` serves a local directory over HTTP/1.1 and honours ``Range`` requests
  (the standard library's ``SimpleHTTPRequestHandler`` does not), counting every request and every
  body byte it sends, so that tests can assert how much was transferred.
* :func:`moto_s3` starts moto's S3-compatible server in a thread.

Both bind port 0 (a free port) and run in daemon threads of the current process.

Example::

    with RangeHTTPServer(tmp_path) as http:
        ckpt = tf2flax.open_checkpoint(http.url + "model.ckpt-1")
        http.bytes_sent, http.requests
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclasses.dataclass
class Request:
    """One request the HTTP server answered."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int  # the body's length as announced (sent in full unless the client hung up)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stalls
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - silence the per-request stderr lines
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _relative(self) -> tuple[str, bool]:
        """(path of the requested file relative to the root, whether GCS asks for metadata).

        In GCS mode the JSON API's object URLs ``/storage/v1/b/BUCKET/o/OBJECT?alt=media`` map to
        ``ROOT/BUCKET/OBJECT``; ``alt=json`` asks for the object's metadata.
        """
        parts = urllib.parse.urlsplit(self.path)
        if not self.server.gcs:
            return urllib.parse.unquote(parts.path).lstrip("/"), False
        match = re.match(r"^/(?:download/)?storage/v1/b/([^/]+)/o/(.+)$", parts.path)
        if match is None:
            return "\0invalid", False
        query = urllib.parse.parse_qs(parts.query)
        rel = match.group(1) + "/" + urllib.parse.unquote(match.group(2))
        return rel, query.get("alt", ["json"])[0] != "media"

    def _file(self, rel: str) -> Path | None:
        if "\0" in rel:
            return None
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents and path != self.server.root:
            return None
        return path if path.is_file() else None

    def _reply(self, status: int, headers: dict[str, str], body: bytes | None, head: bool,
               file: Path | None = None, start: int = 0, length: int = 0) -> None:
        # Recorded before sending: once the client has the bytes, the test may look at the log.
        size = 0 if head else len(body) if body is not None else length
        self.server.record(Request(self.command, self.path, self.headers.get("Range"), status, size))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        if body is not None:
            self.wfile.write(body)
        elif file is not None and length:
            with open(file, "rb") as f:  # headers are flushed: the body goes straight to the socket
                self.connection.sendfile(f, start, length)

    def _serve(self, head: bool) -> None:
        self.server.enter()
        try:
            if self.server.latency:
                time.sleep(self.server.latency)  # a far-away server's time to first byte
            self._answer(head)
        finally:
            self.server.leave()

    def _answer(self, head: bool) -> None:
        rel, metadata = self._relative()
        if self.server.take_failure():
            body = b"try again\n"
            return self._reply(503, {"Content-Length": str(len(body)), "Content-Type": "text/plain"}, body, head)
        if self.server.denied and any(rel.startswith(p) for p in self.server.denied):
            body = b"forbidden\n"
            return self._reply(403, {"Content-Length": str(len(body)), "Content-Type": "text/plain"}, body, head)
        file = self._file(rel)
        if file is None:
            body = b"not found\n"
            return self._reply(404, {"Content-Length": str(len(body)), "Content-Type": "text/plain"}, body, head)
        stat = file.stat()
        size = stat.st_size
        generation = str(stat.st_mtime_ns)
        if metadata:
            bucket, _, name = rel.partition("/")
            body = json.dumps({"kind": "storage#object", "bucket": bucket, "name": name, "size": str(size),
                               "generation": generation, "metageneration": "1"}).encode()
            return self._reply(200, {"Content-Length": str(len(body)), "Content-Type": "application/json"}, body, head)
        common = {
            "x-goog-generation": generation,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"',
            "Last-Modified": self.date_time_string(int(stat.st_mtime)),
        }
        spec = self.headers.get("Range")
        match = _RANGE.match(spec.strip()) if spec else None
        if spec is None or match is None or not self.server.honour_range:
            return self._reply(200, {**common, "Content-Length": str(size)}, None, head, file, 0, size)
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            n = int(last or 0)
            start, stop = max(0, size - n), size
        else:
            start = int(first)
            stop = min(size, int(last) + 1) if last else size
        if start >= size or stop <= start:
            return self._reply(416, {**common, "Content-Range": f"bytes */{size}", "Content-Length": "0"}, b"", head)
        misbehave = self.server.misbehave
        if misbehave == "short" and stop - start > 1:  # a consistent answer, for fewer bytes than asked
            stop = start + (stop - start) // 2
        elif misbehave == "shifted" and stop < size:  # as many bytes as asked, from elsewhere
            start, stop = start + 1, stop + 1
        headers = {**common, "Content-Range": f"bytes {start}-{stop - 1}/{size}", "Content-Length": str(stop - start)}
        if misbehave == "trickle" and not head:  # a byte every half second: never a stall, never done
            self._reply(206, headers, None, head)
            with open(file, "rb") as f:
                f.seek(start)
                for _ in range(stop - start):
                    if self.server.closing.wait(0.5):
                        return
                    self.wfile.write(f.read(1))
                    self.wfile.flush()
            return
        if misbehave == "stall" and not head:  # half the body, then silence until the server closes
            self._reply(206, headers, None, head, file, start, (stop - start) // 2)
            self.server.closing.wait(120)
            return
        self._reply(206, headers, None, head, file, start, stop - start)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, honour_range: bool, gcs: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.gcs = gcs
        self.latency = 0.0
        self.honour_range = honour_range
        self.denied: tuple[str, ...] = ()
        self.misbehave = ""
        self.closing = threading.Event()
        self.log: list[Request] = []
        self.failures = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def take_failure(self) -> bool:
        with self._lock:
            if self.failures > 0:
                self.failures -= 1
                return True
            return False

    def record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)


class RangeHTTPServer:
    """Serve ``root`` on ``http://127.0.0.1:PORT/`` honouring ``Range``; counts requests and bytes.

    ``denied`` is a tuple of path prefixes (relative to ``root``) answered with 403 Forbidden;
    ``latency`` (seconds) delays every answer, as a distant server would. ``misbehave`` makes byte-range
    answers wrong: ``"short"`` (half the bytes asked, with a matching Content-Range), ``"shifted"``
    (the range one byte later), ``"stall"`` (half the body, then nothing until the server closes) or
    ``"trickle"`` (the body a byte every half second).
    With ``gcs=True`` it answers Google Cloud Storage's JSON API instead (point tensorstore at it with
    ``TENSORSTORE_GCS_HTTP_URL``): ``gs://BUCKET/OBJECT`` is the file ``root/BUCKET/OBJECT``. With
    ``tls=True`` it speaks HTTPS with a self-signed certificate, which clients rightly refuse.
    """

    def __init__(self, root: str | os.PathLike, honour_range: bool = True, gcs: bool = False,
                 latency: float = 0.0, tls: bool = False):
        self._server = _Server(Path(root).resolve(), honour_range, gcs)
        self._server.latency = latency
        if tls:
            self._server.socket = _self_signed_context().wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="range-http", daemon=True)
        self._thread.start()

    @property
    def misbehave(self) -> str:
        return self._server.misbehave

    @misbehave.setter
    def misbehave(self, mode: str) -> None:
        self._server.misbehave = mode

    @property
    def denied(self) -> tuple[str, ...]:
        return self._server.denied

    @denied.setter
    def denied(self, prefixes: tuple[str, ...]) -> None:
        self._server.denied = tuple(prefixes)

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` requests with 503 Service Unavailable (a transient error)."""
        with self._server._lock:
            self._server.failures = n

    @property
    def log(self) -> list[Request]:
        with self._server._lock:
            return list(self._server.log)

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent since the last :meth:`reset`."""
        return sum(r.body_bytes for r in self.log)

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def max_concurrent(self) -> int:
        """The most requests served at once since the last :meth:`reset`."""
        return self._server.max_active

    def bytes_of(self, suffix: str) -> int:
        """Body bytes sent for files whose request path ends with ``suffix`` (e.g. a data file)."""
        return sum(r.body_bytes for r in self.log if urllib.parse.urlsplit(r.path).path.endswith(suffix))

    def reset(self) -> None:
        """Forget the log, once the answers still being sent (their bytes already logged) are done."""
        deadline = time.monotonic() + 5
        while self._server.active and time.monotonic() < deadline:
            time.sleep(0.001)
        with self._server._lock:
            self._server.log.clear()
            self._server.max_active = self._server.active

    def close(self) -> None:
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "RangeHTTPServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _self_signed_context() -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 (``cryptography``, a
    dependency of moto)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        (Path(d) / "key.pem").write_bytes(pem)
        context.load_cert_chain(Path(d) / "cert.pem", Path(d) / "key.pem")
    return context


# ----------------------------------------------------------------------------------------------
# S3 (moto)
# ----------------------------------------------------------------------------------------------

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3:
    """moto's S3 server on ``http://127.0.0.1:PORT``, with a boto3 client for setting up buckets."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])

    def upload_dir(self, bucket: str, directory: str | os.PathLike, key_prefix: str = "") -> list[str]:
        """Create ``bucket`` (if needed) and upload every file under ``directory``; returns the keys."""
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        keys = []
        root = Path(directory)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = key_prefix + path.relative_to(root).as_posix()
                client.upload_file(str(path), bucket, key)
                keys.append(key)
        return keys

    def close(self) -> None:
        self._server.stop()

    def __enter__(self) -> "MotoS3":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint directory (for tests that edit the copy, e.g. its state file)."""
    shutil.copytree(src, dst)
    return Path(dst)


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes: ``servers.py http ROOT [LATENCY_S]`` or ``servers.py s3``.

    Prints ``READY <url>`` once listening.

    For benchmarks, which run the servers in another process so that they do not compete with the
    reader for the GIL.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[0] == "http":
        server = RangeHTTPServer(args[1], latency=float(args[2]) if len(args) > 2 else 0.0)
    else:
        server = MotoS3()
    print("READY", server.url if args[0] == "http" else server.endpoint, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.close()


if __name__ == "__main__":
    main()

"""A writable Google Cloud Storage on 127.0.0.1 for output tests: gcp-storage-emulator, taught the
object generations TensorStore's ``gcs`` driver relies on.

The emulator speaks the JSON API that gcsfs uses (uploads of every kind, listings, batch deletes);
it does not send ``x-goog-generation`` with an object's bytes, nor honour ``ifGenerationMatch`` and
``ifGenerationNotMatch``, which TensorStore needs to read and update OCDBT manifests. Those are added
here, as GCS documents them (412 on a failed match, 304 on an unchanged ``ifGenerationNotMatch``).

Example::

    with GcsEmulator("bucket") as gcs:
        subprocess.run([...], env={**os.environ, **gcs.env()})
        gcs.names("out/")                   # the objects written under out/
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
from http import HTTPStatus
from typing import Any, Callable, Iterator

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_ORIGINAL = {name: getattr(objects, name) for name in ("download", "insert", "delete")}
# (bucket, object name) -> what to do with an upload of it; True: answered, do not store it.
_HOOKS: dict[tuple[str, str], Callable[[Any], bool]] = {}


def _generation(storage, bucket: str, name: str) -> str:
    """The object's generation, "0" when it does not exist (GCS's convention for preconditions)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _precondition_failed(request, response, generation: str) -> bool:
    """Answer 412 or 304 when the request's generation conditions do not hold."""
    match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
    if match and match[0] != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return True
    if not_match and not_match[0] == generation:
        response.status = (HTTPStatus.NOT_MODIFIED if request.method == "GET"
                           else HTTPStatus.PRECONDITION_FAILED)
        return True
    return False


def _download(request, response, storage, *args, **kwargs):
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if generation != "0":
        if _precondition_failed(request, response, generation):
            return None
        response["x-goog-generation"] = generation
    return _ORIGINAL["download"](request, response, storage, *args, **kwargs)


def _upload_name(request) -> str | None:
    """The object an upload creates: in the query, or in the metadata of a multipart or resumable one."""
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data if isinstance(request.data, dict) else {}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
    return meta.get("name")


def _insert(request, response, storage, *args, **kwargs):
    bucket, name = request.params["bucket_name"], _upload_name(request)
    hook = _HOOKS.get((bucket, name))
    if hook is not None and hook(response):
        return None
    if name is not None and _precondition_failed(request, response, _generation(storage, bucket, name)):
        return None
    return _ORIGINAL["insert"](request, response, storage, *args, **kwargs)


def _delete(request, response, storage, *args, **kwargs):
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if _precondition_failed(request, response, generation):
        return None
    return _ORIGINAL["delete"](request, response, storage, *args, **kwargs)


@functools.cache
def _teach_generations() -> None:
    """Swap the emulator's handlers for ours, in its route table and for its internal calls."""
    ours = {_ORIGINAL["download"]: _download, _ORIGINAL["insert"]: _insert, _ORIGINAL["delete"]: _delete}
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # "Resource not found" is normal
    for _, methods in emulator.HANDLERS:
        for method, handler in list(methods.items()):
            methods[method] = ours.get(handler, handler)
    objects.download = _download  # objects.get(alt=media) calls it by its module name


class GcsEmulator:
    """A fake GCS with one bucket, serving on a free port of 127.0.0.1 in this process."""

    def __init__(self, bucket: str) -> None:
        _teach_generations()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bucket = bucket
        self._server = emulator.create_server("127.0.0.1", self.port, in_memory=True, default_bucket=bucket)
        self._server._api.daemon = True  # a failed test never leaves the process waiting on it
        self._server.start()
        # Clients hanging up early (TensorStore does) is normal: no traceback on stderr for it.
        self._server._api._httpd.handle_error = lambda request, client_address: None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client process needs to write here (see :meth:`env_for`)."""
        return self.env_for(self.url)

    @staticmethod
    def env_for(url: str) -> dict[str, str]:
        """What a client process needs to write to the emulator at ``url``: TensorStore's GCS endpoint
        and test token, and Orbax's file system (etils.epath) on gcsfs, pointed there, anonymous."""
        return {"TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                "STORAGE_EMULATOR_HOST": url, "EPATH_USE_TF": "false", "FSSPEC_GS_TOKEN": "anon",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def names(self, prefix: str = "") -> list[str]:
        """The objects of the bucket whose names start with ``prefix``, sorted."""
        storage = self._server._storage
        listed, _ = storage.get_file_list(self.bucket, prefix=prefix or None)
        return sorted(o["name"] for o in listed)

    def read(self, name: str) -> bytes:
        return self._server._storage.get_file(self.bucket, name)

    def put(self, name: str, data: bytes) -> None:
        """Write an object directly, as another GCS client would."""
        storage = self._server._storage
        obj = objects._make_object_resource(self.url, self.bucket, name, "application/octet-stream", str(len(data)))
        obj = objects._checksums(data, obj)
        storage.create_file(self.bucket, name, data, obj)

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[threading.Event]:
        """Hold the upload of object ``name`` (and, the server being single-threaded, every request
        after it) until the block ends; the event yielded is set once the upload arrived. Then that
        upload fails with 503 and stores nothing, as if it never completed (the test kills its
        client meanwhile)."""
        reached, release = threading.Event(), threading.Event()

        def hold(response) -> bool:
            reached.set()
            release.wait(300)
            response.status = HTTPStatus.SERVICE_UNAVAILABLE
            return True

        _HOOKS[self.bucket, name] = hold
        try:
            yield reached
        finally:
            del _HOOKS[self.bucket, name]
            release.set()

    @contextlib.contextmanager
    def refusing(self, name: str) -> Iterator[None]:
        """Answer uploads of object ``name`` with 403 Forbidden while the block runs."""
        def refuse(response) -> bool:
            response.status = HTTPStatus.FORBIDDEN
            response.json({"error": {"code": 403, "message": f"{name}: refused by the test"}})
            return True

        _HOOKS[self.bucket, name] = refuse
        try:
            yield
        finally:
            del _HOOKS[self.bucket, name]

    def close(self) -> None:
        self._server.stop()

    def __enter__(self) -> "GcsEmulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

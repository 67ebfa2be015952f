"""Output URLs: which object stores Orbax can write a streamed conversion to (none, in Orbax 0.12).

Orbax writes gs:// and s3:// through ``etils.epath``, which uses TensorFlow's file systems when
TensorFlow is installed (``tf.io.gfile`` has no s3://) and fsspec's ``gcsfs``/``s3fs`` otherwise,
and its TensorStore specs treat ``s3://`` as a local path. Its partial save, which a streamed
conversion needs, commits by renaming the whole checkpoint directory: on an object store that is a
copy of every object, not atomic, so an interrupted commit could leave a checkpoint that looks
finished. Until Orbax commits partial saves on object stores, a URL output is refused up front.

Example::

    check_output_url("s3://bucket/ckpt")     # UnsupportedFormatError naming the reason
"""

from __future__ import annotations

import os

from ..errors import UnsupportedFormatError
from ..storage import is_url, redact_url

_WHY = {
    "gs": "Orbax's partial save (a streamed conversion) commits by renaming the checkpoint directory, "
          "which on GCS copies every object and is not atomic",
    "s3": "Orbax 0.12 cannot write s3:// (its paths go through tf.io.gfile or s3fs, and its TensorStore "
          "specs take s3:// for a local path)",
}


def check_output_url(out: str | os.PathLike) -> None:
    """UnsupportedFormatError for an output URL, naming why and what to do instead."""
    text = os.fspath(out)
    if not is_url(text):
        return
    scheme = text.split("://", 1)[0].lower()
    why = _WHY.get(scheme, f"Orbax does not write {scheme}:// URLs")
    raise UnsupportedFormatError(f"{redact_url(text)}: cannot convert to this URL: {why}. Convert to a local or shared "
                                 "directory (NFS, Lustre...) and copy it afterwards")

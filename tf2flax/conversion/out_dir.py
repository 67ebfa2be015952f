"""The output directory of a conversion: checked before any work, installed atomically at the end.

Example::

    out = check_out("/ckpts/bert", force=False)     # OutputExistsError if it exists
    install(tmp, out, force=False)                  # rename the finished temporary directory
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ..errors import OutputExistsError, UnsupportedFormatError
from ..storage import is_url


def check_out(out: str | os.PathLike, force: bool) -> Path:
    """``out`` as an absolute local path; refuses a URL, and an existing ``out`` unless ``force``."""
    if is_url(os.fspath(out)):
        raise UnsupportedFormatError(f"{os.fspath(out)}: convert writes to a local directory; copy it "
                                     "to cloud storage afterwards")
    path = Path(out).absolute()
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force (force=True) to replace it")
    return path


def install(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (``force``) goes only after that."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    if not force:
        raise OutputExistsError(f"{out} appeared while converting; the conversion is discarded")
    old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()

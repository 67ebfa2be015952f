"""HDF5 files read through the storage layer, and checked before the HDF5 library trusts them.

HDF5 is a large format parsed in C; a hostile file can declare a dataset of terabytes, point at other
files (external links, external storage, virtual datasets), or use a filter (compressor) nobody has
reviewed. :func:`open_hdf5` opens a window of a file in a :class:`~tf2flax.storage.Store` (a whole
``.weights.h5``, or the stored ``model.weights.h5`` member inside a ``.keras`` zip) through h5py's
file-object driver, and :func:`datasets` walks it, refusing all of that before any tensor is read.

Example::

    with open_hdf5(store, "m.weights.h5", 0, store.size("m.weights.h5"), "m.weights.h5") as h5:
        found = datasets(h5.file, h5.size, "m.weights.h5")      # {'layers/dense/vars/0': Dataset, ...}
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import time
from typing import Any

from ..errors import CorruptCheckpointError, UnsupportedFormatError, clip
from ..storage import Store
from .base import ReadStats

# HDF5 filters tf2flax lets the library run: gzip (deflate), shuffle, fletcher32, lzf (h5py's own).
ALLOWED_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
# Deflate expands at most ~1032x; a chunk declaring more than this per stored byte is a bomb.
MAX_EXPANSION = 1100
# Data that is never stored (HDF5 reads the fill value): allowed only this small.
MAX_UNSTORED_BYTES = 1 << 20
MAX_OBJECTS = 1_000_000
MAX_DEPTH = 64
# Without chunk_iter (HDF5 < 1.14), each chunk is looked up by number, a pass over the index each.
SLOW_CHUNK_LOOKUPS = 1024
# Remote files: HDF5's small metadata reads (up to SMALL_READ_BYTES) are served from blocks of
# REMOTE_BLOCK_BYTES, MAX_CACHED_BLOCKS of them kept; larger reads (tensor data) go straight to the store.
SMALL_READ_BYTES = 16 << 10
REMOTE_BLOCK_BYTES = 256 << 10
MAX_CACHED_BLOCKS = 64


class WindowFile(io.RawIOBase):
    """Bytes ``[start, start + size)`` of file ``name`` in ``store``, as a read-only seekable file.

    h5py reads through it (its ``fileobj`` driver calls ``seek`` and ``readinto``), so a ``.keras``
    zip's stored member is read in place, and remote files go through the store's range reads.
    ``stats`` counts what was read.
    """

    def __init__(self, store: Store, name: str, start: int, size: int, stats: ReadStats | None = None,
                 block_size: int = 0):
        super().__init__()
        self.store, self.name, self.start, self.size = store, name, start, size
        self.stats = stats if stats is not None else ReadStats()
        self.position = 0
        self.block_size = block_size
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        count = max(0, min(len(out), self.size - self.position))
        if count and count <= SMALL_READ_BYTES and self.block_size:
            self._from_blocks(out[:count])
        elif count:
            self._fetch(self.position, out[:count])
        self.position += count
        return count

    def _fetch(self, position: int, out: memoryview) -> None:
        began = time.perf_counter()
        self.store.read_into(self.name, self.start + position, out)
        self.stats.add(len(out), time.perf_counter() - began)

    def _from_blocks(self, out: memoryview) -> None:
        """A small read (HDF5 metadata) from cached ``block_size`` blocks: a request per block, not per read."""
        done = 0
        while done < len(out):
            at = self.position + done
            index = at // self.block_size
            block = self._blocks.get(index)
            if block is None:
                first = index * self.block_size
                data = bytearray(min(self.block_size, self.size - first))
                self._fetch(first, memoryview(data))
                block = self._blocks[index] = bytes(data)
                if len(self._blocks) > MAX_CACHED_BLOCKS:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(index)
            offset = at - index * self.block_size
            take = min(len(out) - done, len(block) - offset)
            out[done:done + take] = block[offset:offset + take]
            done += take


@dataclasses.dataclass
class OpenHDF5:
    """An open HDF5 file (``file``: an ``h5py.File``) over a window of ``size`` bytes."""

    file: Any
    window: WindowFile

    @property
    def size(self) -> int:
        return self.window.size

    def close(self) -> None:
        self.file.close()
        self.window.close()

    def __enter__(self) -> OpenHDF5:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_hdf5(store: Store, name: str, start: int, size: int, where: str, stats: ReadStats | None = None,
              block_size: int = 0) -> OpenHDF5:
    """Open bytes ``[start, start + size)`` of ``name`` as HDF5; CorruptCheckpointError if they are not.
    ``block_size``: serve small reads from cached blocks of this size (for remote files)."""
    import h5py

    window = WindowFile(store, name, start, size, stats, block_size)
    try:
        file = h5py.File(window, "r")
    except (OSError, ValueError, RuntimeError) as e:
        window.close()
        raise CorruptCheckpointError(f"{where}: not a readable HDF5 file ({short_error(e)})") from None
    return OpenHDF5(file, window)


def short_error(error: BaseException) -> str:
    """An exception's text, cut to 200 characters, for messages."""
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def datasets(file: Any, size: int, where: str, groups: list[str] | None = None,
             data_ranges: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Every dataset of the HDF5 ``file`` (``size`` bytes), by path, after checking the whole tree;
    ``groups``, if given, receives the path of every group, ``data_ranges`` the (start, stop) of every
    dataset's stored bytes (contiguous data, chunks).

    Refused (UnsupportedFormatError): external links, external storage, virtual datasets, filters
    outside :data:`ALLOWED_FILTERS`. Corrupt (CorruptCheckpointError): data lying outside the file,
    datasets declaring more bytes than their storage can hold, a tree too deep or too large.
    Soft links are not followed (Keras never writes them).
    """
    found: dict[str, Any] = {}
    _walk(file, "", size, where, found, [0], 0, groups if groups is not None else [],
          data_ranges if data_ranges is not None else [])
    return found


def _walk(group: Any, prefix: str, size: int, where: str, found: dict[str, Any], count: list[int], depth: int,
          groups: list[str], ranges: list[tuple[int, int]]) -> None:
    import h5py

    if depth > MAX_DEPTH:
        raise CorruptCheckpointError(f"{where}: groups nested more than {MAX_DEPTH} deep at {clip(prefix)}")
    try:
        names = list(group.keys())
    except (OSError, RuntimeError, ValueError) as e:
        raise CorruptCheckpointError(f"{where}: group {clip(prefix or '/')} cannot be listed ({short_error(e)})") \
            from None
    for name in names:
        count[0] += 1
        if count[0] > MAX_OBJECTS:
            raise CorruptCheckpointError(f"{where}: more than {MAX_OBJECTS} objects")
        path = f"{prefix}/{name}" if prefix else name
        try:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise UnsupportedFormatError(
                    f"{where}: {clip(path)} is an external link to {clip(link.filename)}; tf2flax reads nothing "
                    "outside the file it was given")
            if isinstance(link, h5py.SoftLink):
                continue
            obj = group[name]
        except (UnsupportedFormatError, CorruptCheckpointError):
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"{where}: {clip(path)} cannot be opened ({short_error(e)})") from None
        if isinstance(obj, h5py.Group):
            groups.append(path)
            _walk(obj, path, size, where, found, count, depth + 1, groups, ranges)
        elif isinstance(obj, h5py.Dataset):
            ranges.extend(check_dataset(obj, path, size, where))
            found[path] = obj


def check_dataset(ds: Any, path: str, size: int, where: str) -> list[tuple[int, int]]:
    """Refuse dataset ``ds`` unless its layout, filters and declared size fit inside a ``size``-byte file;
    the byte ranges its data occupies."""
    import h5py

    here = f"{where}: dataset {clip(path)}"
    try:
        plist = ds.id.get_create_plist()
        layout = plist.get_layout()
        shape = ds.shape
        itemsize = ds.id.get_type().get_size()
        external = plist.get_external_count()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] if layout == h5py.h5d.CHUNKED else []
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise CorruptCheckpointError(f"{here}: its layout cannot be read ({short_error(e)})") from None
    if layout == getattr(h5py.h5d, "VIRTUAL", -1):
        raise UnsupportedFormatError(f"{here} is a virtual dataset (its data lies in other files); tf2flax reads "
                                     "nothing outside the file it was given")
    if external:
        raise UnsupportedFormatError(f"{here} keeps its data in {external} external file(s); tf2flax reads nothing "
                                     "outside the file it was given")
    unknown = [f for f in filters if f not in ALLOWED_FILTERS]
    if unknown:
        raise UnsupportedFormatError(
            f"{here} uses HDF5 filter {unknown[0]}, which tf2flax does not run (allowed: "
            f"{', '.join(sorted(ALLOWED_FILTERS.values()))})")
    if shape is None:  # a null dataspace: nothing to read
        return []
    nbytes = math.prod(shape) * itemsize
    ranges: list[tuple[int, int]] = []
    try:
        if layout == h5py.h5d.CHUNKED:
            stored = _chunks_stored(ds, size, here, ranges)
        elif layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            stored = ds.id.get_storage_size() if offset is not None else 0
            if offset is not None and (offset < 0 or offset + stored > size):
                raise CorruptCheckpointError(
                    f"{here}: its {stored} bytes at offset {offset} lie outside the file's {size} bytes")
            if offset is not None:
                ranges.append((offset, offset + stored))
        else:  # compact: the data lies in the object header, which the library has read already
            stored = ds.id.get_storage_size()
    except CorruptCheckpointError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise CorruptCheckpointError(f"{here}: its storage cannot be read ({short_error(e)})") from None
    limit = stored * (MAX_EXPANSION if filters else 1) + MAX_UNSTORED_BYTES
    if nbytes > limit:
        raise CorruptCheckpointError(
            f"{here} declares shape {list(shape)} ({nbytes} bytes) but stores {stored} bytes in a "
            f"{size}-byte file")
    return ranges


def _chunks_stored(ds: Any, size: int, here: str, ranges: list[tuple[int, int]]) -> int:
    """The bytes of ``ds``'s allocated chunks, each checked to lie inside the file.

    The chunks are visited with ``chunk_iter`` (one pass over the chunk index); asking for them by
    number costs a pass each (20,000 one-element chunks in an 840 KB file: minutes).
    """
    count = ds.id.get_num_chunks()
    if count > MAX_OBJECTS:
        raise CorruptCheckpointError(f"{here}: {count} chunks, more than {MAX_OBJECTS}")
    chunks: list[Any] = []
    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(chunks.append)
    elif count <= SLOW_CHUNK_LOOKUPS:
        chunks = [ds.id.get_chunk_info(i) for i in range(count)]
    else:
        raise UnsupportedFormatError(f"{here}: {count} chunks, more than this HDF5 library lists cheaply")
    total = 0
    for i, chunk in enumerate(chunks):
        if chunk.byte_offset is None or chunk.byte_offset < 0 or chunk.byte_offset + chunk.size > size:
            raise CorruptCheckpointError(
                f"{here}: chunk {i} ({chunk.size} bytes at offset {chunk.byte_offset}) lies outside the "
                f"file's {size} bytes")
        total += chunk.size
        ranges.append((chunk.byte_offset, chunk.byte_offset + chunk.size))
    return total

"""Validated records kept packed: one byte buffer of compact JSON and an offset array, not a list of dicts.

A million records as Python dicts cost about 1.4 kB each, and every DataLoader worker that reads
them writes their reference counts, so the forked workers' copy-on-write pages turn into copies.
Packed, a record costs its JSON bytes plus an 8-byte offset, and the buffers are only read.
Indexing decodes one record (a few microseconds) into the same :class:`Record` the JSON loader made.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from .records import Record

__all__ = ["PackedRecords", "release_freed_memory"]


class PackedRecords(Sequence[Record]):
    """An immutable-per-record, appendable sequence of :class:`Record` s stored as packed JSON."""

    def __init__(self, records: Sequence[Record] = ()) -> None:
        self._buffer = np.zeros(0, dtype=np.uint8)
        self._offsets = np.zeros(1, dtype=np.int64)
        # per appended batch: first index, source file, and the folder image paths are stored relative to
        self._starts: list[int] = []
        self._sources: list[str] = []
        self._bases: list[str] = []
        if records:
            self.extend(records)

    def extend(self, records: Sequence[Record]) -> None:
        """Append ``records`` (all from one source file, as :func:`load_records` returns them)."""
        if not records:
            return
        paths = [str(p) for rec in records for p in rec.image_paths]
        base = os.path.commonpath(paths) if paths else ""
        if base and len(paths) == 1:
            base = os.path.dirname(base)
        cut = len(base)
        encoded = [json.dumps([dict(rec), rec.row, [str(p)[cut:].lstrip(os.sep) for p in rec.image_paths]],
                              ensure_ascii=False, separators=(",", ":")).encode() for rec in records]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        self._starts.append(len(self))
        self._sources.append(records[0].source)
        self._bases.append(base)
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lengths)])
        self._buffer = np.concatenate([self._buffer, np.frombuffer(b"".join(encoded), dtype=np.uint8)])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} of {n}")
        index %= n
        data, row, paths = json.loads(self._buffer[self._offsets[index]:self._offsets[index + 1]].tobytes())
        part = bisect.bisect_right(self._starts, index) - 1
        base = self._bases[part]
        return Record(data, source=self._sources[part], row=row,
                      image_paths=tuple(Path(os.path.normpath(os.path.join(base, p))) for p in paths))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed buffers."""
        return int(self._buffer.nbytes + self._offsets.nbytes)


def release_freed_memory() -> None:
    """Return the heap pages freed after parsing a JSON file to the OS (glibc's ``malloc_trim``; elsewhere
    nothing): left resident, forked loader workers copy them as soon as they allocate there."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)

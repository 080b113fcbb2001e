"""Samples out of an uncompressed tar shard, much cheaper per member than `tarfile` (which
webdataset uses; docs/benchmarks.md).

A sample is the run of consecutive members sharing a key, as webdataset groups them
(`base_plus_ext`: the key is the path up to the first dot of the file name, the rest is the
lower-cased extension): `{"__key__", "__url__", ext: bytes, ...}`. Handled: ustar (with the name
prefix), GNU long names (`L`), pax headers (`x`: path and size; `g` ignored), base-256 sizes;
members that are not regular files, and webdataset's `__*__` metadata, are skipped. Members before
`start` samples are passed over by seeking, without reading their data. Compressed shards are not
this module's: `is_plain_tar` tells them apart, and the caller reads those through webdataset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

BLOCK = 512
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")


class TarFormatError(ValueError):
    """A header that is not a tar header (a truncated or corrupt shard)."""


def is_plain_tar(head: bytes) -> bool:
    """Whether the first block of a file is an uncompressed tar header (ustar/GNU magic, or a v7
    header whose checksum holds)."""
    if len(head) < BLOCK:
        return False
    if head[257:262] == b"ustar":
        return True
    try:
        return _checksum(head) == _number(head[148:156])
    except TarFormatError:
        return False


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:BLOCK])


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU), for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b" \0") or b"0", 8)
    except ValueError:
        raise TarFormatError(
            f"bad tar header field {bytes(field)!r} (checksum or size): a corrupt shard?"
        ) from None


def _pax(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def members(
    stream: BinaryIO, seekable: bool = False
) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """`(name, size, read)` of each regular member; `read()` returns its data, and the data of a
    member not read is passed over (by seeking, when `seekable`). Ends at the end-of-archive block
    or at end of file."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    pending = 0  # bytes of the previous member's data (and padding) still to pass
    while True:
        if pending and seekable:
            stream.seek(pending, 1)
        while pending and not seekable:
            chunk = stream.read(min(pending, 1 << 20))
            if not chunk:
                return
            pending -= len(chunk)
        pending = 0
        header = stream.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK):
            return
        if _checksum(header) != _number(header[148:156]):
            raise TarFormatError("bad tar header checksum (a truncated or corrupt shard?)")
        kind = header[156:157]
        size = _number(header[124:136])
        if kind in (b"L", b"x", b"g"):  # meta-data for the next member (g: for all, ignored)
            data = stream.read(-(-size // BLOCK) * BLOCK)[:size]
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax(data)
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            name = (
                header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
            )
        name = pax.get("path", long_name or name)
        size = int(pax.get("size", size))
        long_name, pax = None, {}
        padded = -(-size // BLOCK) * BLOCK
        if kind not in (b"0", b"\0", b"7"):  # regular files only, as webdataset (tarinfo.isreg())
            pending = padded
            continue
        read_bytes = 0

        def read(size=size) -> bytes:
            nonlocal read_bytes
            data = stream.read(size)
            read_bytes = len(data)
            return data

        yield name, size, read
        pending = padded - read_bytes


def samples(
    stream: BinaryIO, url: str, start: int = 0, stop: int | None = None, seekable: bool = False
) -> Iterator[dict]:
    """Samples `start` … `stop - 1` of a shard, grouped by key; the earlier ones are passed over
    unread."""
    index, current = -1, None
    for name, size, read in members(stream, seekable):
        if _META.match(name) or not (m := _KEY.match(name)):
            continue
        key, ext = m.group(1), m.group(2).lower()
        if current is None or key != current["__key__"]:
            if current is not None and index >= start:
                yield current
            index += 1
            if stop is not None and index >= stop:
                return
            current = {"__key__": key, "__url__": url}
        if index < start:
            continue  # not read: members() passes over the data
        if ext in current:
            raise TarFormatError(f"{url}: duplicate file name in sample {key}: {name}")
        data = read()
        if len(data) < size:
            raise TarFormatError(f"{url}: truncated at {name} ({len(data)} of {size} bytes)")
        current[ext] = data
    if current is not None and index >= start and (stop is None or index < stop):
        yield current

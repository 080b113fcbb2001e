"""The lean tar reader gives exactly the samples webdataset gives, for the tar flavours found in the
wild."""

from __future__ import annotations

import io
import tarfile

import pytest
from webdataset.tariterators import tarfile_samples

from simmim_swinv2.data import tar
from simmim_swinv2.data.shards import ShardDataset

LONG = "class_with_a_rather_long_directory_name/" * 3  # > 100 characters with the file name


def write_tar(path, members, fmt=tarfile.GNU_FORMAT, mode="w"):
    """`members`: (name, bytes or None for a directory, or ("symlink", target))."""
    with tarfile.open(path, mode, format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return str(path)


def reference(url):
    return [
        {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
        for s in tarfile_samples(iter([{"url": url}]))
    ]


def ours(url, start=0, stop=None, seekable=True):
    with open(url, "rb") as f:
        stream = f if seekable else io.BufferedReader(NoSeek(f))
        return [
            {k: v for k, v in s.items() if k != "__url__"}
            for s in tar.samples(stream, url, start, stop, seekable)
        ]


class NoSeek(io.RawIOBase):
    """A pipe-like stream: readable, not seekable."""

    def __init__(self, f):
        self.f = f

    def readable(self):
        return True

    def readinto(self, b):
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)


MEMBERS = [
    ("0001.jpg", b"\xff\xd8" + bytes(700)),
    ("0001.cls", b"3"),
    ("dir", None),
    ("link.jpg", ("symlink", "0001.jpg")),
    ("__meta__.json", b"{}"),
    ("0002.JPG", bytes(512)),
    ("0002.cls", b"4"),  # extension lower-cased; data exactly one block
    (LONG + "0003.jpeg", b"x" * 1025),
    (LONG + "0003.cls", b"5"),
    ("sub/0004.tar.gz", b"nested name: key sub/0004, extension tar.gz"),
    ("0005.png", b""),  # empty member
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_same_samples_as_webdataset(tmp_path, fmt):
    # ustar: long names split into prefix + name
    members = (
        MEMBERS
        if fmt != tarfile.USTAR_FORMAT
        else [(n.replace(LONG, "p" * 90 + "/"), d) for n, d in MEMBERS]
    )
    if fmt == tarfile.PAX_FORMAT:
        members = [*members, ("ünïcode.jpg", b"pax path record")]
    url = write_tar(tmp_path / "a.tar", members, fmt)
    expected = reference(url)
    assert len(expected) >= 5
    assert ours(url) == expected
    assert ours(url, seekable=False) == expected
    for start, stop in [(0, 2), (1, 3), (2, 99), (4, 5), (3, 3)]:
        assert ours(url, start, stop) == expected[start:stop], (start, stop)
        assert ours(url, start, stop, seekable=False) == expected[start:stop], (start, stop)


def test_plain_tar_detection_and_compressed_shards_through_webdataset(tmp_path):
    plain = write_tar(tmp_path / "a.tar", MEMBERS[:2])
    packed = write_tar(tmp_path / "a.tar.gz", MEMBERS[:2], mode="w:gz")
    with open(plain, "rb") as f:
        assert tar.is_plain_tar(f.read(512))
    with open(packed, "rb") as f:
        assert not tar.is_plain_tar(f.read(512))
    assert [s["cls"] for s in ShardDataset._samples(packed, 0, 9)] == [b"3"]  # read by webdataset
    assert [s["cls"] for s in ShardDataset._samples(plain, 0, 9)] == [b"3"]


def test_corrupt_and_truncated_shards_fail_clearly(tmp_path):
    url = write_tar(tmp_path / "a.tar", MEMBERS[:2] + MEMBERS[5:7])
    data = bytearray(open(url, "rb").read())
    bad = tmp_path / "bad.tar"
    # the header after 0001.jpg's 2 data blocks
    bad.write_bytes(data[:1536] + b"garbage!" * 64 + data[2048:])
    with pytest.raises(tar.TarFormatError, match="checksum|corrupt"), open(bad, "rb") as f:
        list(tar.samples(f, str(bad), seekable=True))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:700])  # inside the first member's data
    with pytest.raises(tar.TarFormatError, match="truncated"), open(cut, "rb") as f:
        list(tar.samples(f, str(cut), seekable=True))

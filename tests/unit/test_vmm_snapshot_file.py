"""The snapshot file format: written atomically, read back whole, and refused (one clear
error) when it is from another format version, truncated or has any byte changed."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from qumran.vmm.memory import GuestMemory
from qumran.vmm.snapshot.file import HEADER, SnapshotError, open_snapshot, write_snapshot

MiB = 1 << 20


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    memory = GuestMemory(8 * MiB)
    try:
        memory.write(0x1000, b"low page")
        memory.write(5 * MiB + 3, b"\x01" * 70000)
        path = tmp_path / "vm.snap"
        written = write_snapshot(str(path), {"machine": {"name": "t"}}, memory)
    finally:
        memory.close()
    assert written < 8 * MiB  # sparse: only what the guest touched
    assert not (tmp_path / "vm.snap.part").exists()
    return path


def test_round_trip_maps_memory_from_the_file(snapshot: Path) -> None:
    snap = open_snapshot(str(snapshot))
    try:
        assert snap.state["machine"] == {"name": "t"}
        memory = snap.map_memory()
    finally:
        snap.close()
    try:
        assert memory.read(0x1000, 8) == b"low page"
        assert memory.read(5 * MiB + 3, 70000) == b"\x01" * 70000
        assert memory.read(2 * MiB, 16) == bytes(16)
        memory.write(0x1000, b"private!")  # copy-on-write: the file keeps its bytes
        assert memory.read(0x1000, 8) == b"private!"
        memory.discard()  # a reboot: a fresh, zeroed memfd
        assert memory.read(0x1000, 8) == bytes(8) and not memory.private
    finally:
        memory.close()
    assert open_snapshot(str(snapshot)).state["machine"]["name"] == "t"


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _ram_offset(path: Path) -> int:
    return int(HEADER.unpack(path.read_bytes()[: HEADER.size])[5])


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda p: 0, "is not a qumran-vmm snapshot"),
        (lambda p: HEADER.size + 5, "checksum of its machine state"),
        (lambda p: 60, "truncated or damaged"),  # the RAM size in the header
        (lambda p: _ram_offset(p) + 0x1000 + 2, "checksum of its guest memory"),
        (lambda p: _ram_offset(p) + 7 * MiB, "bytes its checksum does not cover"),  # a hole
    ],
)
def test_one_changed_byte_is_refused(snapshot: Path, where: object, message: str) -> None:
    _flip(snapshot, where(snapshot))  # type: ignore[operator]
    with pytest.raises(SnapshotError, match=message):
        open_snapshot(str(snapshot))


def test_another_format_version_is_refused(snapshot: Path) -> None:
    with open(snapshot, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 99))
    with pytest.raises(SnapshotError, match=r"is snapshot format 99 .* reads format 2"):
        open_snapshot(str(snapshot))


def test_a_truncated_file_is_refused(snapshot: Path) -> None:
    os.truncate(snapshot, snapshot.stat().st_size - 4096)
    with pytest.raises(SnapshotError, match="is truncated"):
        open_snapshot(str(snapshot))

"""virtio-blk on a raw image file (virtio 1.2, 5.2 "Block Device").

Requests move data straight between the file and guest memory: ``os.preadv`` and
``os.pwritev`` get the chain's memoryviews into the mapped guest RAM, so no Python byte
string holds the data. A flush is an ``fsync`` of the image: once the driver sees it
complete, the data is on the host's disk, whatever happens to qumran-vmm afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.queue import DescChain, QueueError

SECTOR = 512
QUEUE_SIZE = 256
# 5.2.3 feature bits
F_SEG_MAX, F_RO, F_FLUSH = 1 << 2, 1 << 5, 1 << 9
# 5.2.6 struct virtio_blk_req: le32 type, le32 reserved, le64 sector; data; u8 status.
REQ_HEADER = struct.Struct("<IIQ")
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20  # VIRTIO_BLK_ID_BYTES
_NONE = memoryview(b"")


@dataclass
class DiskImage:
    """An open raw image: what ``--disk PATH[,ro]`` resolves to before the guest starts."""

    path: str
    fd: int
    readonly: bool
    size: int

    @classmethod
    def open(cls, path: str, readonly: bool) -> DiskImage:
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceError(f"disk image {path} does not exist") from None
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise DeviceError(f"cannot open disk image {path}: {exc.strerror}") from None
            hint = "" if readonly else " (add ,ro to attach it read-only)"
            raise DeviceError(f"disk image {path} is not {'readable' if readonly else 'writable'}"
                              f"{hint}") from None  # fmt: skip
        try:
            st = os.fstat(fd)
            size = st.st_size if os.path.isfile(path) else os.lseek(fd, 0, os.SEEK_END)
            # One writer or many readers, as QEMU does with its image locks.
            fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DeviceError(f"disk image {path} is in use by another VM") from None
            raise DeviceError(f"cannot use disk image {path}: {exc.strerror}") from None
        if size < SECTOR:
            os.close(fd)
            raise DeviceError(f"disk image {path} is smaller than one 512-byte sector")
        return cls(path, fd, readonly, size)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _split(views: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """The first ``n`` bytes of ``views`` (copied) and views of the rest."""
    head = bytearray()
    for i, v in enumerate(views):
        take = min(n - len(head), len(v))
        head += v[:take]
        if len(head) == n:
            rest = views[i + 1 :]
            return bytes(head), ([v[take:], *rest] if take < len(v) else rest)
    return bytes(head), []


class VirtioBlock(VirtioDevice):
    device_id = DeviceId.BLOCK
    name = "virtio-blk"

    def __init__(self, image: DiskImage, serial: str = "") -> None:
        features = F_SEG_MAX | F_FLUSH | (F_RO if image.readonly else 0)
        self.capacity = image.size // SECTOR
        # 5.2.4: capacity, size_max, seg_max (two descriptors go to header and status).
        config = struct.pack("<QII", self.capacity, 0, QUEUE_SIZE - 2)
        super().__init__((QUEUE_SIZE,), features, config)
        self.image = image
        self.serial = (serial or os.path.basename(image.path)).encode()[:ID_BYTES]
        self.counters = {"read_bytes": 0, "write_bytes": 0, "requests": 0, "flushes": 0}

    def process(self, ctx: DeviceContext, index: int) -> None:
        queue = ctx.queues[index]
        done = 0
        while (chain := queue.pop(ctx.ram)) is not None:
            written = self._request(chain)
            queue.push(chain.head, written)
            done += 1
        if done:
            ctx.used(index)

    def _request(self, chain: DescChain) -> int:
        """Carry out one request; the bytes written into the chain (data + status)."""
        readable, writable = chain.readable, chain.writable
        if readable and len(readable[0]) == REQ_HEADER.size:  # Linux: the header alone
            kind, _, sector = REQ_HEADER.unpack(readable[0])
            out_data = readable[1:]
        else:  # 5.2.6.2: the device must not assume the layout
            header, out_data = _split(readable, REQ_HEADER.size)
            if len(header) < REQ_HEADER.size:
                raise QueueError("virtio-blk request without a header")
            kind, _, sector = REQ_HEADER.unpack(header)
        last = writable[-1] if writable else _NONE
        if not last:
            raise QueueError("virtio-blk request without a status byte")
        if len(last) == 1:  # Linux: the status byte alone
            status_view, in_data = last, writable[:-1]
        else:
            status_view, in_data = last[-1:], [*writable[:-1], last[:-1]]
        self.counters["requests"] += 1
        status, written = S_OK, 0
        match kind:
            case 0:  # T_IN
                status, written = self._read(sector, in_data)
            case 1:  # T_OUT
                status = self._write(sector, out_data)
            case 4:  # T_FLUSH
                status = self._flush()
            case 8:  # T_GET_ID
                written = self._copy_out(self.serial.ljust(ID_BYTES, b"\0"), in_data)
            case _:
                status = S_UNSUPP
        status_view[0] = status
        return written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector * SECTOR + length <= self.capacity * SECTOR

    def _read(self, sector: int, views: list[memoryview]) -> tuple[int, int]:
        length = sum(map(len, views))
        if not self._in_range(sector, length):
            return S_IOERR, 0
        try:
            n = os.preadv(self.image.fd, views, sector * SECTOR) if views else 0
        except OSError:
            return S_IOERR, 0
        self.counters["read_bytes"] += n
        return (S_OK, n) if n == length else (S_IOERR, n)

    def _write(self, sector: int, views: list[memoryview]) -> int:
        length = sum(map(len, views))
        if self.image.readonly:
            return S_IOERR
        if not self._in_range(sector, length):
            return S_IOERR
        try:
            n = os.pwritev(self.image.fd, views, sector * SECTOR) if views else 0
        except OSError:
            return S_IOERR
        self.counters["write_bytes"] += n
        return S_OK if n == length else S_IOERR

    def _flush(self) -> int:
        self.counters["flushes"] += 1
        if self.image.readonly:
            return S_OK
        try:
            os.fsync(self.image.fd)
        except OSError:
            return S_IOERR
        return S_OK

    @staticmethod
    def _copy_out(data: bytes, views: list[memoryview]) -> int:
        done = 0
        for v in views:
            take = min(len(v), len(data) - done)
            v[:take] = data[done : done + take]
            done += take
        return done

    def status(self) -> dict[str, object]:
        return {"type": "disk", "path": self.image.path, "readonly": self.image.readonly,
                "capacity": self.capacity * SECTOR, **self.counters}  # fmt: skip

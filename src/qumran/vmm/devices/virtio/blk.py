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
import stat
import struct

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import DeviceContext, DeviceId, VirtioDevice
from qumran.vmm.devices.virtio.iopool import IoPool, Transfer, default_helpers
from qumran.vmm.devices.virtio.queue import DescChain, QueueError, SplitQueue

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


class DiskImage:
    """An open raw image: what ``--disk PATH[,ro]`` resolves to before the guest starts."""

    __slots__ = ("fd", "path", "readonly", "size")

    def __init__(self, path: str, fd: int, readonly: bool, size: int) -> None:
        self.path, self.fd, self.readonly, self.size = path, fd, readonly, size

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
        return cls._locked(path, fd, readonly)

    @classmethod
    def inherit(cls, fd: int, readonly: bool) -> DiskImage:
        """An image the parent opened and handed over as ``fd``: its open mode must allow
        what the guest gets (a read-only fd only for ``,ro``)."""
        path = f"fd={fd}"
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as exc:
            raise DeviceError(f"--disk {path}: {exc.strerror}") from None
        if not readonly and flags & os.O_ACCMODE == os.O_RDONLY:
            raise DeviceError(f"--disk {path}: open read-only; add ,ro to attach it read-only")
        os.set_inheritable(fd, False)  # not passed on to passt or anything else we start
        return cls._locked(path, fd, readonly)

    @classmethod
    def _locked(cls, path: str, fd: int, readonly: bool) -> DiskImage:
        """``fd`` sized and locked; closed on failure."""
        try:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)
            size = st.st_size if regular else os.lseek(fd, 0, os.SEEK_END)
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


def _parse(chain: DescChain) -> tuple[int, int, list[memoryview], list[memoryview], memoryview]:
    """(type, sector, device-readable data, device-writable data, status byte) of a request
    (5.2.6: header, data, status)."""
    readable, writable = chain.readable, chain.writable
    if readable and len(readable[0]) == REQ_HEADER.size:  # Linux: the header alone
        kind, _, sector = REQ_HEADER.unpack(readable[0])
        out_data = readable[1:]
    else:  # 2.7.3 Message Framing: the device must not assume the layout
        header, out_data = _split(readable, REQ_HEADER.size)
        if len(header) < REQ_HEADER.size:
            raise QueueError("virtio-blk request without a header")
        kind, _, sector = REQ_HEADER.unpack(header)
    last = writable[-1] if writable else _NONE
    if not last:
        raise QueueError("virtio-blk request without a status byte")
    if len(last) == 1:  # Linux: the status byte alone
        return kind, sector, out_data, writable[:-1], last
    return kind, sector, out_data, [*writable[:-1], last[:-1]], last[-1:]


class VirtioBlock(VirtioDevice):
    device_id = DeviceId.BLOCK
    name = "virtio-blk"
    snapshottable = True  # every request is done before the I/O loop lets a snapshot in

    def __init__(self, image: DiskImage, serial: str = "", helpers: int | None = None) -> None:
        features = F_SEG_MAX | F_FLUSH | (F_RO if image.readonly else 0)
        self.capacity = image.size // SECTOR
        # 5.2.4: capacity, size_max, seg_max (two descriptors go to header and status).
        config = struct.pack("<QII", self.capacity, 0, QUEUE_SIZE - 2)
        super().__init__((QUEUE_SIZE,), features, config)
        self.image = image
        self.serial = (serial or os.path.basename(image.path)).encode()[:ID_BYTES]
        self.counters = {"read_bytes": 0, "write_bytes": 0, "requests": 0, "flushes": 0}
        self._pool = IoPool(image.fd, default_helpers() if helpers is None else helpers)

    def process(self, ctx: DeviceContext, index: int) -> None:
        queue = ctx.queues[index]
        while batch := queue.pop_all(ctx.ram):
            self._serve(queue, batch)
            ctx.used(index)  # one notification per batch; the driver's used_event decides

    def _serve(self, queue: SplitQueue, batch: list[DescChain]) -> None:
        """Carry out a batch: reads and writes together (in parallel when large), a flush
        only once every request before it in the batch is done."""
        ready: list[Transfer] = []
        capacity, readonly = self.capacity * SECTOR, self.image.readonly
        self.counters["requests"] += len(batch)
        for chain in batch:
            kind, sector, out_data, in_data, status_view = _parse(chain)
            if kind in (T_IN, T_OUT):
                write = kind == T_OUT
                views = out_data if write else in_data
                t = Transfer(write, views, sector * SECTOR, sum(map(len, views)))
                t.head, t.status = chain.head, status_view
                # Out of range, not whole sectors, or a write to a read-only disk: fails.
                if t.length % SECTOR or t.offset + t.length > capacity or (write and readonly):
                    t.length = -1
                ready.append(t)
            elif kind == T_FLUSH:
                self._complete(queue, ready)
                ready = []
                status_view[0] = self._flush()
                queue.push(chain.head, 1)
            elif kind == T_GET_ID:
                status_view[0] = S_OK
                n = self._copy_out(self.serial.ljust(ID_BYTES, b"\0"), in_data)
                queue.push(chain.head, n + 1)
            else:
                status_view[0] = S_UNSUPP
                queue.push(chain.head, 1)
        self._complete(queue, ready)

    def _complete(self, queue: SplitQueue, ready: list[Transfer]) -> None:
        """Move the data of ``ready`` requests, then return them to the driver."""
        if not ready:
            return
        self._pool.run(ready)
        counters = self.counters
        for t in ready:
            if not t.ok:
                t.status[0] = S_IOERR
                queue.push(t.head, 1)
            elif t.write:
                counters["write_bytes"] += t.length
                t.status[0] = S_OK
                queue.push(t.head, 1)
            else:
                counters["read_bytes"] += t.length
                t.status[0] = S_OK
                queue.push(t.head, t.length + 1)

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

    def close(self) -> None:
        self._pool.close()

    def status(self) -> dict[str, object]:
        return {"type": "disk", "path": self.image.path, "readonly": self.image.readonly,
                "capacity": self.capacity * SECTOR, "split_batches": self._pool.split_batches,
                **self.counters}  # fmt: skip

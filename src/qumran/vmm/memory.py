"""Guest RAM: one mapping, registered with KVM as one or two slots (below the 3 GiB MMIO
gap, and from 4 GiB up).

Anonymous private memory, or, when another process must map the same pages (``shared``:
a vhost-user back end, qemu-storage-daemon serving a disk, is handed the fd and reads and
writes the guest's buffers itself), a memfd mapped shared. Only when needed: a memfd is
shmem, which gets transparent huge pages only where the host's administrator allowed
them for shmem (``/sys/kernel/mm/transparent_hugepage/shmem_enabled``, "never" by
default), and a guest booting on 4 KiB pages was measured 2-3 s slower to reach /init
in the KVM test host (BENCHMARKS.md). Either way pages come when the guest touches them.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os

from qumran.kvm import Vm
from qumran.vmm.arch import layout
from qumran.vmm.errors import GuestTooLarge, VmmError

MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
MADV_REMOVE = getattr(mmap, "MADV_REMOVE", 9)  # linux/mman.h
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # linux/mman.h; absent in 3.11
MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)
HUGE_PAGE = 2 * 1024 * 1024


class GuestMemory:
    """Guest-physical RAM backed by process memory, addressed by guest-physical address."""

    def __init__(self, size: int, shared: bool = False) -> None:
        if size < layout.MiB or size % layout.PAGE_SIZE:
            raise GuestTooLarge(f"memory size {size} must be a whole number of pages >= 1 MiB")
        self.size = size
        self.ranges = layout.ram_ranges(size)
        self._map_new(shared)

    @classmethod
    def from_snapshot(cls, fd: int, offset: int, size: int) -> GuestMemory:
        """RAM as a private copy-on-write mapping of ``size`` bytes of file ``fd`` at
        ``offset`` (a page multiple): pages are read from the file when the guest first
        touches them, and what it writes stays in this process. A reboot (:meth:`discard`)
        moves to fresh anonymous memory, as a cold start has nothing to do with the file."""
        self = cls.__new__(cls)
        if size < layout.MiB or size % layout.PAGE_SIZE or offset % mmap.ALLOCATIONGRANULARITY:
            raise VmmError(f"memory of {size} bytes at offset {offset} cannot be mapped")
        self.size = size
        self.ranges = layout.ram_ranges(size)
        self.fd = -1  # nothing another process could map: no vhost-user after a restore
        self._snapshot = True
        try:
            self._map = mmap.mmap(fd, size, mmap.MAP_PRIVATE | MAP_NORESERVE,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)  # fmt: skip
        except OSError as exc:
            raise VmmError(f"cannot map guest memory from the snapshot: {exc}") from None
        self._base = 0
        self._view = (ctypes.c_char * size).from_buffer(self._map, 0)
        self.host_addr = ctypes.addressof(self._view)
        return self

    @property
    def private(self) -> bool:
        """True while RAM is a copy-on-write mapping of a snapshot file."""
        return self._snapshot

    def data_extents(self) -> list[tuple[int, int]]:
        """(offset, length) in RAM order (the ranges back to back) of what may hold
        anything but zeros: the memfd's allocated pages (SEEK_DATA), or, for anonymous
        memory and a snapshot mapping, every 64 KiB that is not all zeros."""
        if self.fd < 0:
            return _nonzero_extents(memoryview(self._map)[self._base : self._base + self.size])
        out: list[tuple[int, int]] = []
        start, end = self._base, self._base + self.size
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            if data >= end:
                break
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            out.append((data - start, hole - data))
            pos = hole
        return out

    def image(self) -> memoryview:
        """All of RAM as one read-only view, ranges back to back (what a snapshot saves)."""
        return memoryview(self._map)[self._base : self._base + self.size].toreadonly()

    def _map_new(self, shared: bool) -> None:
        size = self.size
        self._snapshot = False
        self.fd = -1  # the memfd, when shared
        try:
            # One huge page more than needed, so RAM can start on a 2 MiB boundary (see
            # below); the spare part is never touched, so it costs nothing. MAP_NORESERVE,
            # and a memfd has no commit charge (VM_NORESERVE) either.
            if shared:
                self.fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
                os.ftruncate(self.fd, size + HUGE_PAGE)
                flags = mmap.MAP_SHARED | MAP_NORESERVE
            else:
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
            self._map = mmap.mmap(self.fd, size + HUGE_PAGE, flags)
        except OSError as exc:
            if self.fd >= 0:
                os.close(self.fd)
            raise VmmError(f"cannot allocate {size >> 20} MiB of guest memory: {exc}") from None
        # Guest-physical and host-virtual addresses congruent modulo 2 MiB let the host back
        # RAM with transparent huge pages and KVM map them as huge pages in the nested page
        # tables: far fewer faults while the guest first touches its memory (for a memfd,
        # where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it).
        start = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._base = -start % HUGE_PAGE
        if MADV_HUGEPAGE is not None:
            with contextlib.suppress(OSError):  # THP disabled or unsupported: 4 KiB pages
                self._map.madvise(MADV_HUGEPAGE)
        self._view: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * size).from_buffer(
            self._map, self._base
        )
        self.host_addr = ctypes.addressof(self._view)

    def regions(self) -> tuple[tuple[int, int, int], ...]:
        """(guest address, size, host-virtual address) of each RAM range: what KVM and the
        host kernel's vhost are told (the host address is that of our mapping)."""
        out, offset = [], 0
        for gpa, length in self.ranges:
            out.append((gpa, length, self.host_addr + offset))
            offset += length
        return tuple(out)

    def file_regions(self) -> tuple[tuple[int, int, int, int], ...]:
        """(guest address, size, host-virtual address, offset in :attr:`fd`) of each RAM
        range: what a vhost-user back end is told, to map the same pages. Empty unless
        the memory is shared."""
        if self.fd < 0:
            return ()
        offset = self._base
        out = []
        for gpa, length, hva in self.regions():
            out.append((gpa, length, hva, offset))
            offset += length
        return tuple(out)

    def register(self, vm: Vm) -> None:
        for slot, (gpa, length, hva) in enumerate(self.regions()):
            vm.set_user_memory_region(slot, gpa, length, hva)

    def _offset(self, gpa: int, length: int) -> int:
        offset = self._base
        for start, size in self.ranges:
            if start <= gpa and gpa + length <= start + size:
                return offset + gpa - start
            offset += size
        raise GuestTooLarge(f"guest range {gpa:#x}+{length:#x} is not RAM")

    def write(self, gpa: int, data: bytes) -> None:
        start = self._offset(gpa, len(data))
        self._map[start : start + len(data)] = data

    def load_file(self, gpa: int, fd: int, offset: int, length: int) -> None:
        """Read ``length`` bytes of file ``fd`` from ``offset`` straight into RAM at ``gpa``.

        No copy passes through the process heap: a kernel kept as ``bytes`` would cost its
        size in resident memory for the life of the VM.
        """
        view = self.view(gpa, length)
        try:
            done = 0
            while done < length:
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise VmmError(f"file ended {length - done} bytes early while loading it")
                done += n
        finally:
            view.release()

    def read(self, gpa: int, length: int) -> bytes:
        start = self._offset(gpa, length)
        return self._map[start : start + length]

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes of RAM at ``gpa`` (devices do I/O into it).

        GuestTooLarge if the range is not entirely inside one RAM range. Drop every view
        before :meth:`close`.
        """
        if gpa < 0 or length < 0:
            raise GuestTooLarge(f"guest range {gpa:#x}+{length:#x} is not RAM")
        start = self._offset(gpa, length)
        return memoryview(self._map)[start : start + length]

    def discard(self) -> None:
        """Give every page back (reads as zeros again): a cold start for a reboot.

        Shared: MADV_REMOVE, not MADV_DONTNEED, which in a shared mapping only unmaps (the
        memfd would keep the old contents). RAM restored from a snapshot is replaced by
        fresh anonymous memory (the next boot registers the new address with KVM)."""
        if self._snapshot:
            self._view = None
            self._map.close()
            self._map_new(shared=False)
            return
        self._map.madvise(MADV_REMOVE if self.fd >= 0 else MADV_DONTNEED)

    def close(self) -> None:
        self._view = None
        if not self._map.closed:
            self._map.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


_CHUNK = 64 * 1024


def _nonzero_extents(ram: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of the 64 KiB chunks of ``ram`` that are not all zeros, merged."""
    zero = bytes(_CHUNK)
    out: list[tuple[int, int]] = []
    for pos in range(0, len(ram), _CHUNK):
        chunk = ram[pos : pos + _CHUNK]
        if chunk == zero[: len(chunk)]:
            continue
        if out and out[-1][0] + out[-1][1] == pos:
            out[-1] = (out[-1][0], out[-1][1] + len(chunk))
        else:
            out.append((pos, len(chunk)))
    return out

"""The coalesced MMIO/PIO ring: guest writes KVM queued instead of exiting.

KVM_CAP_COALESCED_MMIO gives the ring's page offset in every vCPU's mapping (one ring per
VM, the same page in each). ``struct kvm_coalesced_mmio_ring`` is ``first`` and ``last``
(u32) then entries of ``struct kvm_coalesced_mmio``; KVM appends at ``last``, user space
takes from ``first`` and moves it on. When the ring is full KVM exits as for any other
write, so nothing is lost, but user space must take the queued writes before it handles
an exit, or they would come after it (Documentation/virt/kvm/api.rst,
KVM_REGISTER_COALESCED_MMIO; QEMU's ``kvm_flush_coalesced_mmio_buffer``).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable

from qumran.kvm import structs as s

_HEAD = struct.Struct("<II")  # first, last
_FIRST = struct.Struct("<I")
_ENTRY = struct.Struct("<QII")  # phys_addr (or port), len, pio; then 8 data bytes
_ENTRY_SIZE = ctypes.sizeof(s.kvm_coalesced_mmio)
_DATA = s.kvm_coalesced_mmio.data.offset


class CoalescedRing:
    """The ring at ``offset`` in a vCPU's mapping ``page``."""

    def __init__(self, page: mmap.mmap | bytearray, offset: int) -> None:
        self._page = page
        self._offset = offset
        self._entries = offset + _HEAD.size
        # KVM_COALESCED_MMIO_MAX: as many entries as fit in the page after the head.
        self.capacity = (mmap.PAGESIZE - _HEAD.size) // _ENTRY_SIZE

    def pending(self) -> bool:
        first, last = _HEAD.unpack_from(self._page, self._offset)
        return bool(first != last)

    def drain(self, handle: Callable[[int, bool, bytes], None]) -> int:
        """Call ``handle(address, is_pio, data)`` for each queued write, oldest first; returns
        how many. ``first`` moves on after each one is handled, so another thread that sees
        the ring empty knows every write in it has been handled, not just taken."""
        page, base = self._page, self._entries
        first, last = _HEAD.unpack_from(page, self._offset)
        done = 0
        while first != last:
            at = base + first * _ENTRY_SIZE
            addr, length, pio = _ENTRY.unpack_from(page, at)
            handle(addr, pio == 1, bytes(page[at + _DATA : at + _DATA + min(length, 8)]))
            first = (first + 1) % self.capacity
            _FIRST.pack_into(page, self._offset, first)
            done += 1
            if first == last:  # KVM may have queued more meanwhile
                last = _HEAD.unpack_from(page, self._offset)[1]
        return done

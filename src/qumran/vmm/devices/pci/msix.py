"""MSI-X: the vector table and pending-bit array a device exposes in a BAR.

PCI Local Bus Specification 3.0, 6.8.2 "MSI-X Capability and Table Structure": each table
entry is Message Address (64 bits), Message Data (32 bits) and Vector Control (bit 0 =
masked); the capability's Message Control holds the table size (N-1), Function Mask (bit
14) and MSI-X Enable (bit 15). A masked vector that fires sets its pending bit and is
delivered when unmasked (6.8.3.5).

The table knows nothing of KVM: each vector's interrupt goes to a :class:`MsiSink`, which
the VMM implements with an irqfd per vector and a KVM GSI route (``kvm_routes.py``), so
raising an interrupt is one eventfd write from the device I/O thread.
"""

from __future__ import annotations

import struct
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol
else:  # typing costs every VMM process resident memory; a Protocol matters to checkers only
    Protocol = object

CAP_ID_MSIX = 0x11
ENTRY_SIZE = 16
CTRL_ENABLE, CTRL_FUNCTION_MASK = 1 << 15, 1 << 14
VECTOR_MASKED = 1


class MsiSink(Protocol):
    """Where vector ``index`` of one device's table goes."""

    def route(self, index: int, address: int, data: int) -> None: ...

    def trigger(self, index: int) -> None: ...

    def eventfd(self, index: int) -> int | None:
        """An eventfd whose signal raises vector ``index`` without us (KVM irqfd), if any."""
        ...


class MsixTable:
    """``count`` vectors, table and PBA; thread-safe (vCPUs program, the I/O thread fires)."""

    def __init__(self, count: int, sink: MsiSink) -> None:
        if not 1 <= count <= 2048:
            raise ValueError(f"MSI-X supports 1..2048 vectors, not {count}")
        self.count = count
        self._sink = sink
        self._lock = threading.Lock()
        self.table = bytearray(ENTRY_SIZE * count)
        for i in range(count):
            self.table[ENTRY_SIZE * i + 12] = VECTOR_MASKED  # masked after reset (6.8.2.9)
        self.pending = 0
        self.enabled = False
        self.function_mask = False
        self._routed: dict[int, tuple[int, int]] = {}

    @property
    def table_size(self) -> int:
        return ENTRY_SIZE * self.count

    @property
    def pba_size(self) -> int:
        return 8 * ((self.count + 63) // 64)

    def capability(self, bar: int, table_offset: int, pba_offset: int) -> tuple[bytes, bytes]:
        """Body (after id/next) and write mask of the MSI-X capability."""
        body = struct.pack("<HII", self.count - 1, table_offset | bar, pba_offset | bar)
        wmask = struct.pack("<HII", CTRL_ENABLE | CTRL_FUNCTION_MASK, 0, 0)
        return body, wmask

    def set_control(self, control: int) -> None:
        """Message Control was written (the transport watches the capability)."""
        with self._lock:
            self.enabled = bool(control & CTRL_ENABLE)
            self.function_mask = bool(control & CTRL_FUNCTION_MASK)
            for index in range(self.count):  # entries written under the function mask
                if not self._masked(index):
                    self._route(index)
            self._deliver_pending()

    def _masked(self, index: int) -> bool:
        return self.function_mask or bool(self.table[ENTRY_SIZE * index + 12] & VECTOR_MASKED)

    def read_table(self, offset: int, size: int) -> int:
        with self._lock:
            if offset < 0 or offset + size > len(self.table):
                return 0
            return int.from_bytes(self.table[offset : offset + size], "little")

    def write_table(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > len(self.table):
            return
        with self._lock:
            self.table[offset : offset + size] = value.to_bytes(size, "little")
            index = offset // ENTRY_SIZE
            if not self._masked(index):
                self._route(index)
            self._deliver_pending()

    def read_pba(self, offset: int, size: int) -> int:
        with self._lock:
            return (self.pending >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _route(self, index: int) -> None:
        address, data = struct.unpack_from("<QI", self.table, ENTRY_SIZE * index)
        if self._routed.get(index) != (address, data):
            self._routed[index] = (address, data)
            self._sink.route(index, address, data)

    def _deliver_pending(self) -> None:
        if not self.enabled:
            return
        for index in range(self.count):
            if self.pending >> index & 1 and not self._masked(index):
                self.pending &= ~(1 << index)
                self._route(index)
                self._sink.trigger(index)

    def signal(self, index: int) -> bool:
        """Fire vector ``index``; False if MSI-X is off (the caller falls back to INTx)."""
        with self._lock:
            if not self.enabled:
                return False
            if index >= self.count:
                return True  # VIRTIO_MSI_NO_VECTOR or garbage: no interrupt at all
            if self._masked(index):
                self.pending |= 1 << index
            else:  # routed: every table write that leaves a vector unmasked routes it
                self._sink.trigger(index)
            return True

    def direct_fd(self, index: int) -> int | None:
        """The sink's eventfd for vector ``index`` while signalling it is always right to
        do (MSI-X enabled, vector valid and unmasked), its route installed; else None, and
        interrupts must come through :meth:`signal` (pending bit, INTx fallback)."""
        with self._lock:
            if not self.enabled or index >= self.count or self._masked(index):
                return None
            self._route(index)
            return self._sink.eventfd(index)

    def save_state(self) -> dict[str, object]:
        with self._lock:
            return {"table": self.table.hex(), "pending": self.pending, "enabled": self.enabled,
                    "function_mask": self.function_mask}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Table and control of a snapshot; every unmasked vector is routed again."""
        table = bytes.fromhex(state["table"])
        if len(table) != len(self.table):
            raise ValueError(f"MSI-X table of {len(table)} bytes for {self.count} vectors")
        with self._lock:
            self.table[:] = table
            self.pending = state["pending"]
            self.enabled, self.function_mask = state["enabled"], state["function_mask"]
            self._routed.clear()
            for index in range(self.count):
                if not self._masked(index):
                    self._route(index)

    def reset(self) -> None:
        with self._lock:
            for i in range(self.count):
                self.table[ENTRY_SIZE * i : ENTRY_SIZE * (i + 1)] = bytes(12) + b"\x01\0\0\0"
            self.pending = 0
            self.enabled = self.function_mask = False

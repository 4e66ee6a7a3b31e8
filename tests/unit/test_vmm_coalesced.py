"""The console's THR in KVM's coalesced PIO ring: the ring read as KVM lays it out (a page
filled here the way KVM fills it), the UART's "quiet" rule through the register writes the
Linux 8250 console driver makes, and the bytes reaching the console in order. The KVM side
runs in the KVM tier (tests/kvm/test_vmm_boot.py counts ``exits.coalesced``)."""

from __future__ import annotations

import mmap
import struct
import threading

import pytest

from qumran.kvm import structs as s
from qumran.kvm.coalesced import CoalescedRing
from qumran.vmm.coalesced import ConsoleCoalescing
from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy.serial import COM1_BASE, UART_PORTS, Serial16550

THR, IER, LCR, MCR, LSR = 0, 1, 3, 4, 5
ENTRY = struct.Struct("<QII8s")
OFFSET = 2 * mmap.PAGESIZE  # where the ring sits in a vCPU's mapping (a page index from KVM)


class KvmSide:
    """What KVM does to the ring page: append at ``last`` while there is room."""

    def __init__(self, page: bytearray, capacity: int) -> None:
        self.page = page
        self.capacity = capacity

    def head(self) -> tuple[int, int]:
        first, last = struct.unpack_from("<II", self.page, OFFSET)
        return first, last

    def queue(self, port: int, value: int, pio: int = 1) -> bool:
        first, last = self.head()
        if (last + 1) % self.capacity == first:
            return False  # full: KVM exits for this write instead
        at = OFFSET + 8 + last * ctypes_entry_size()
        ENTRY.pack_into(self.page, at, port, 1, pio, bytes([value]).ljust(8, b"\0"))
        struct.pack_into("<I", self.page, OFFSET + 4, (last + 1) % self.capacity)
        return True


def ctypes_entry_size() -> int:
    import ctypes

    return ctypes.sizeof(s.kvm_coalesced_mmio)


class FakeVm:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def register_coalesced_pio(self, port: int, size: int) -> None:
        self.calls.append(("register", port, size))

    def unregister_coalesced_pio(self, port: int, size: int) -> None:
        self.calls.append(("unregister", port, size))


class Setup:
    def __init__(self) -> None:
        self.page = bytearray(OFFSET + mmap.PAGESIZE)
        self.ring = CoalescedRing(self.page, OFFSET)
        self.kvm = KvmSide(self.page, self.ring.capacity)
        self.vm = FakeVm()
        self.out = bytearray()
        self.uart = Serial16550(NoLine(), self.out.extend)
        self.bus = PioBus()
        self.bus.register(COM1_BASE, UART_PORTS, self.uart)
        self.coalescing = ConsoleCoalescing(self.vm, self.ring, self.bus)  # type: ignore[arg-type]
        self.uart.watch_quiet(self.coalescing.set_quiet)

    def exit_write(self, reg: int, value: int) -> None:
        """A write that exits: the vCPU drains first, as VcpuThread does."""
        self.coalescing.drain()
        self.bus.write(COM1_BASE + reg, 1, value)

    def exit_read(self, reg: int) -> int:
        self.coalescing.drain()
        return self.bus.read(COM1_BASE + reg, 1)

    def thr(self, byte: int) -> None:
        """The guest writes THR: queued by KVM while registered, an exit otherwise."""
        if not (self.coalescing.registered and self.kvm.queue(COM1_BASE, byte)):
            self.exit_write(THR, byte)

    def console_write(self, text: bytes, ier: int) -> None:
        """Linux's serial8250_console_write: save IER, clear it, poll LSR before each
        byte, wait for the transmitter, restore IER."""
        self.exit_read(IER)  # saved; ``ier`` is what it is restored to here
        self.exit_write(IER, 0)
        for byte in text:
            while not self.exit_read(LSR) & 0x20:
                pass
            self.thr(byte)
        self.exit_read(LSR)
        self.exit_write(IER, ier)


class NoLine:
    def set_level(self, high: bool) -> None:
        pass


@pytest.fixture
def st() -> Setup:
    return Setup()


def test_the_ring_gives_writes_oldest_first_and_wraps_around() -> None:
    page = bytearray(OFFSET + mmap.PAGESIZE)
    ring = CoalescedRing(page, OFFSET)
    assert ring.capacity == (mmap.PAGESIZE - 8) // 24 == 170
    kvm = KvmSide(page, ring.capacity)
    seen: list[tuple[int, bool, bytes]] = []
    for round_ in range(3):  # 3 x 100 entries: the indices wrap past 170
        for i in range(100):
            assert kvm.queue(0x3F8, (round_ * 100 + i) & 0xFF)
        assert ring.pending()
        assert ring.drain(lambda *entry: seen.append(entry)) == 100
        assert not ring.pending()
    assert [d[0] for _a, _p, d in seen] == [i & 0xFF for i in range(300)]
    assert {(a, p) for a, p, _d in seen} == {(0x3F8, True)}


def test_a_full_ring_refuses_the_next_write_until_drained() -> None:
    page = bytearray(OFFSET + mmap.PAGESIZE)
    ring = CoalescedRing(page, OFFSET)
    kvm = KvmSide(page, ring.capacity)
    assert all(kvm.queue(0x3F8, 1) for _ in range(ring.capacity - 1))
    assert not kvm.queue(0x3F8, 2)  # KVM would exit for this one
    assert ring.drain(lambda *_: None) == ring.capacity - 1
    assert kvm.queue(0x3F8, 3)


def test_first_moves_on_only_after_each_write_is_handled() -> None:
    page = bytearray(OFFSET + mmap.PAGESIZE)
    ring = CoalescedRing(page, OFFSET)
    kvm = KvmSide(page, ring.capacity)
    kvm.queue(0x3F8, 1)
    kvm.queue(0x3F8, 2)
    pending_during: list[bool] = []
    ring.drain(lambda *_: pending_during.append(ring.pending()))
    assert pending_during == [True, True]  # another thread would wait for the lock


def test_the_uart_is_quiet_only_after_an_lsr_read_with_ier_clear(st: Setup) -> None:
    assert st.vm.calls == []  # at reset: not quiet (no LSR read yet)
    st.exit_read(LSR)
    assert st.vm.calls == [("register", COM1_BASE, 1)]
    st.exit_write(IER, 0x05)
    assert st.vm.calls[-1] == ("unregister", COM1_BASE, 1)
    st.exit_write(IER, 0)
    st.exit_read(LSR)
    assert st.vm.calls[-1] == ("register", COM1_BASE, 1)
    st.exit_write(LCR, 0x83)  # DLAB: offset 0 is the divisor latch now
    assert st.vm.calls[-1] == ("unregister", COM1_BASE, 1)
    st.exit_read(LSR)
    assert st.vm.calls[-1] == ("unregister", COM1_BASE, 1)  # DLAB still set
    st.exit_write(LCR, 0x03)
    st.exit_read(LSR)
    assert st.vm.calls[-1] == ("register", COM1_BASE, 1)
    st.exit_write(MCR, 0x1B)  # loopback: THR goes to RBR, the guest can read it
    st.exit_read(LSR)
    assert st.vm.calls[-1] == ("unregister", COM1_BASE, 1)
    assert len(st.vm.calls) == 6  # no call when nothing changes


def test_a_blind_writer_is_never_coalesced(st: Setup) -> None:
    st.exit_write(IER, 0)
    for byte in b"blind":
        st.thr(byte)
    assert st.vm.calls == []
    assert bytes(st.out) == b"blind"


def test_linux_console_writes_reach_the_console_in_order_with_one_exit_per_byte(
    st: Setup,
) -> None:
    exits = 0
    real_read, real_write = st.exit_read, st.exit_write

    def counted_read(reg: int) -> int:
        nonlocal exits
        exits += 1
        return real_read(reg)

    def counted_write(reg: int, value: int) -> None:
        nonlocal exits
        exits += 1
        real_write(reg, value)

    st.exit_read, st.exit_write = counted_read, counted_write  # type: ignore[method-assign]
    st.console_write(b"[    0.000000] Linux version 6.1\n", ier=0)
    st.console_write(b"second line\n", ier=0x05)  # the tty is open: IER back to RDI|RLSI
    st.bus.write(COM1_BASE + THR, 1, ord("!"))  # interrupt-driven output: not quiet, direct
    assert bytes(st.out) == b"[    0.000000] Linux version 6.1\nsecond line\n!"
    text = len(b"[    0.000000] Linux version 6.1\n") + len(b"second line\n")
    # per line: IER read and write, one LSR read per byte, the last LSR read, IER restore;
    # every THR write is queued (the line's first LSR read makes the UART quiet)
    assert exits == text + 2 * 4
    assert st.coalescing.count == text


def test_a_drain_waits_for_one_under_way_so_bytes_keep_their_order(st: Setup) -> None:
    st.exit_read(LSR)
    for byte in b"abc":
        st.kvm.queue(COM1_BASE, byte)
    entered, release = threading.Event(), threading.Event()
    real_transmit = st.out.extend

    def slow_out(data: bytes) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(5)
        real_transmit(data)

    st.uart._out = slow_out  # type: ignore[method-assign]
    other_vcpu = threading.Thread(target=st.coalescing.drain)
    other_vcpu.start()
    assert entered.wait(5)
    # this vCPU restores IER (not quiet any more), then writes THR itself
    vcpu = threading.Thread(target=lambda: st.exit_write(IER, 0x05) or st.thr(ord("d")))
    vcpu.start()
    vcpu.join(0.2)
    assert vcpu.is_alive()  # the vCPU's drain waits for the one under way
    release.set()
    other_vcpu.join(5)
    vcpu.join(5)
    assert bytes(st.out) == b"abcd"

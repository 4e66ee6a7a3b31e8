"""The 16550A UART behaves the way the Linux 8250 driver needs it to."""

from __future__ import annotations

import threading

import pytest

from qumran.vmm.devices.legacy import serial as u
from qumran.vmm.devices.legacy.serial import Serial16550

THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class RecordingLine:
    """An IrqLine that remembers every level it was driven to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    @property
    def rising_edges(self) -> int:
        return sum(
            1 for i, lv in enumerate(self.levels) if lv and (i == 0 or not self.levels[i - 1])
        )


class Uart:
    def __init__(self) -> None:
        self.line = RecordingLine()
        self.sent = bytearray()
        self.dev = Serial16550(self.line, self.sent.extend)

    def r(self, reg: int) -> int:
        return self.dev.pio_read(reg, 1)

    def w(self, reg: int, value: int) -> None:
        self.dev.pio_write(reg, 1, value)


@pytest.fixture
def uart() -> Uart:
    return Uart()


def test_linux_autoconfig_finds_a_16550a(uart: Uart) -> None:
    # 8250_port.c autoconfig(): IER existence test
    uart.w(IER, 0)
    assert uart.r(IER) & 0x0F == 0
    uart.w(IER, 0x0F)
    assert uart.r(IER) & 0x0F == 0x0F
    uart.w(IER, 0)
    # loopback test: LOOP | OUT2 | RTS must read back as DCD | CTS
    save_mcr = uart.r(MCR)
    uart.w(MCR, u.MCR_LOOP | 0x0A)
    assert uart.r(MSR) & 0xF0 == 0x90
    uart.w(MCR, save_mcr)
    # IIR FIFO bits after enabling the FIFO: 3 = 16550A
    uart.w(LCR, 0xBF)
    uart.w(FCR, 0)  # EFR on chips that have one; plain FCR here
    uart.w(LCR, 0)
    uart.w(FCR, u.FCR_ENABLE)
    assert uart.r(IIR) >> 6 == 3
    # autoconfig_16550a(): no EFR behind DLAB or LCR=0xBF (IIR reads non-zero there)
    uart.w(LCR, 0x80)
    assert uart.r(IIR) != 0
    uart.w(LCR, 0xBF)
    assert uart.r(IIR) != 0
    # not a 16750: IIR bit 5 never follows FCR bit 5
    uart.w(LCR, 0)
    uart.w(FCR, u.FCR_ENABLE | 0x20)
    assert uart.r(IIR) >> 5 == 6
    # not an XScale: IER bit 6 (UUE) does not stick
    uart.w(IER, 0x40)
    assert uart.r(IER) & 0x40 == 0


def test_scratch_register_holds_any_byte(uart: Uart) -> None:
    for value in (0xA5, 0x5A, 0x00, 0xFF):
        uart.w(SCR, value)
        assert uart.r(SCR) == value


def test_loopback_fifo_holds_16_bytes_like_a_16550a(uart: Uart) -> None:
    # size_fifo(): in loopback, bytes written to THR come back through RBR, 16 at most.
    uart.w(FCR, u.FCR_ENABLE | u.FCR_CLEAR_RX | 0x04)
    uart.w(MCR, u.MCR_LOOP)
    for i in range(256):
        uart.w(THR, i)
    received: list[int] = []
    while uart.r(LSR) & u.LSR_DR and len(received) < 256:
        received.append(uart.r(RBR))
    assert received == list(range(16))
    assert uart.sent == b""  # loopback traffic never reaches the host


def test_loopback_overrun_sets_oe_until_lsr_is_read(uart: Uart) -> None:
    uart.w(MCR, u.MCR_LOOP)  # FIFO off: a one-byte receive buffer
    uart.w(THR, 1)
    uart.w(THR, 2)
    assert uart.r(LSR) & u.LSR_OE
    assert not uart.r(LSR) & u.LSR_OE
    assert uart.r(RBR) == 1


def test_loopback_maps_modem_control_to_modem_status(uart: Uart) -> None:
    uart.w(MCR, u.MCR_LOOP)
    uart.r(MSR)  # clear the deltas of entering loopback
    uart.w(MCR, u.MCR_LOOP | u.MCR_DTR | u.MCR_OUT1)
    msr = uart.r(MSR)
    assert msr & 0xF0 == u.MSR_DSR | u.MSR_RI
    assert msr & u.MSR_DDSR
    uart.w(MCR, u.MCR_LOOP)
    assert uart.r(MSR) & u.MSR_TERI  # RI went 1 -> 0


def test_modem_lines_outside_loopback_say_ready(uart: Uart) -> None:
    assert uart.r(MSR) & 0xF0 == u.MSR_CTS | u.MSR_DSR | u.MSR_DCD


def test_thre_interrupt_fires_when_thri_enabled_with_empty_thr(uart: Uart) -> None:
    assert not uart.line.high
    uart.w(IER, u.IER_THRI)
    assert uart.line.high
    assert uart.r(IIR) & 0x0F == u.IIR_THRI
    # reading IIR acknowledged it: the line drops, nothing else is pending
    assert not uart.line.high
    assert uart.r(IIR) & 0x0F == u.IIR_NO_INT


def test_thre_interrupt_fires_again_after_each_byte(uart: Uart) -> None:
    uart.w(IER, u.IER_THRI)
    uart.r(IIR)
    edges = uart.line.rising_edges
    for ch in b"abc":
        uart.w(THR, ch)
        assert uart.line.high
    assert uart.line.rising_edges == edges + 3  # a fresh ISA edge per byte
    assert uart.sent == b"abc"
    assert uart.r(IIR) & 0x0F == u.IIR_THRI


def test_thr_write_without_thri_raises_nothing(uart: Uart) -> None:
    for ch in b"polled console":
        assert uart.r(LSR) & u.LSR_THRE
        uart.w(THR, ch)
    assert uart.sent == b"polled console"
    assert uart.line.levels == []


def test_linux_txen_test_sees_the_interrupt(uart: Uart) -> None:
    # serial8250_iir_txen_test(): TEMT set and IIR not NO_INT, else UART_BUG_TXEN
    uart.w(IER, u.IER_THRI)
    assert uart.r(LSR) & u.LSR_TEMT
    assert not uart.r(IIR) & u.IIR_NO_INT
    uart.w(IER, 0)
    assert not uart.line.high


def test_reenabling_thri_rearms_the_interrupt(uart: Uart) -> None:
    # serial8250_do_startup's UART_BUG_THRE test: THRI off and on again must re-fire.
    uart.w(IER, u.IER_THRI)
    iir1 = uart.r(IIR)
    uart.w(IER, 0)
    uart.w(IER, u.IER_THRI)
    iir2 = uart.r(IIR)
    assert not iir1 & u.IIR_NO_INT
    assert not iir2 & u.IIR_NO_INT


def test_received_data_sets_dr_and_raises_rdi(uart: Uart) -> None:
    uart.w(IER, u.IER_RDI)
    assert uart.dev.feed(b"hi") == 2
    assert uart.line.high
    assert uart.r(LSR) & u.LSR_DR
    assert uart.r(IIR) & 0x0F == u.IIR_RDI
    assert uart.r(RBR) == ord("h")
    assert uart.line.high  # still data
    assert uart.r(RBR) == ord("i")
    assert not uart.r(LSR) & u.LSR_DR
    assert not uart.line.high
    assert uart.r(IIR) & 0x0F == u.IIR_NO_INT


def test_input_without_rdi_is_polled_not_interrupting(uart: Uart) -> None:
    uart.dev.feed(b"x")
    assert uart.line.levels == []
    assert uart.r(LSR) & u.LSR_DR
    assert uart.r(RBR) == ord("x")


def test_new_input_after_draining_makes_a_new_edge(uart: Uart) -> None:
    uart.w(IER, u.IER_RDI)
    uart.dev.feed(b"a")
    uart.r(RBR)
    uart.dev.feed(b"b")
    assert uart.line.rising_edges == 2


def test_iir_reports_sources_by_priority(uart: Uart) -> None:
    uart.w(IER, u.IER_RDI | u.IER_THRI | u.IER_RLSI | u.IER_MSI)
    uart.w(MCR, u.MCR_LOOP)  # MSR deltas pending (lowest priority)
    uart.w(THR, 1)
    uart.w(THR, 2)  # overrun: line status pending (highest)
    assert uart.r(IIR) & 0x0F == u.IIR_RLSI
    uart.r(LSR)  # clears the overrun
    assert uart.r(IIR) & 0x0F == u.IIR_RDI
    uart.r(RBR)
    assert uart.r(IIR) & 0x0F == u.IIR_THRI
    assert uart.r(IIR) & 0x0F == u.IIR_MSI
    uart.r(MSR)
    assert uart.r(IIR) & 0x0F == u.IIR_NO_INT
    assert not uart.line.high


def test_divisor_latch_is_behind_dlab(uart: Uart) -> None:
    uart.w(IER, 0x05)
    uart.w(LCR, 0x83)
    uart.w(DLL, 0x01)
    uart.w(DLM, 0x00)
    assert (uart.r(DLL), uart.r(DLM)) == (0x01, 0x00)
    uart.w(LCR, 0x03)
    assert uart.r(IER) == 0x05  # the divisor writes did not touch IER
    uart.w(THR, ord("z"))
    assert uart.sent == b"z"


def test_fifo_enable_shows_in_iir_and_clear_flushes_input(uart: Uart) -> None:
    assert uart.r(IIR) & 0xC0 == 0
    uart.w(FCR, u.FCR_ENABLE)
    assert uart.r(IIR) & 0xC0 == 0xC0
    uart.dev.feed(b"stale")
    uart.w(FCR, u.FCR_ENABLE | u.FCR_CLEAR_RX)
    assert not uart.r(LSR) & u.LSR_DR


def test_host_input_is_bounded(uart: Uart) -> None:
    assert uart.dev.feed(bytes(u.HOST_RX_LIMIT - 1)) == u.HOST_RX_LIMIT - 1
    assert uart.dev.feed(b"xyz") == 1


def test_wide_accesses_act_on_consecutive_registers(uart: Uart) -> None:
    uart.dev.pio_write(SCR, 2, 0xBEEF)  # SCR takes 0xEF; the byte past the UART is dropped
    assert uart.r(SCR) == 0xEF
    assert uart.dev.pio_read(SCR, 4) == 0xFFFFFFEF
    assert uart.dev.pio_read(LCR, 2) == uart.r(LCR) | uart.r(MCR) << 8


def test_vcpus_and_console_thread_share_the_uart() -> None:
    """Each register access is whole whichever thread makes it. The guest's two vCPUs
    hold its driver's port lock from the LSR read to the RBR read, as Linux does: without
    it both could see the one byte ready, and the second read an empty RBR."""
    uart = Uart()
    uart.w(IER, u.IER_THRI | u.IER_RDI)
    received: list[int] = []
    port_lock = threading.Lock()

    def vcpu(ch: int) -> None:
        for _ in range(2000):
            uart.w(THR, ch)
            with port_lock:
                if uart.r(LSR) & u.LSR_DR:
                    received.append(uart.r(RBR))

    def console() -> None:
        for _ in range(500):
            uart.dev.feed(b"k")

    threads = [threading.Thread(target=vcpu, args=(c,)) for c in b"ab"]
    threads.append(threading.Thread(target=console))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while uart.r(LSR) & u.LSR_DR:
        received.append(uart.r(RBR))
    assert sorted(uart.sent) == sorted(b"a" * 2000 + b"b" * 2000)
    assert received == [ord("k")] * 500

"""A 16550A UART, as the Linux 8250 driver probes and drives it.

Register map (National Semiconductor PC16550D datasheet, "Register Summary"; Linux
``include/uapi/linux/serial_reg.h``), offsets from the base (COM1 = 0x3F8):

  0  RBR (read) / THR (write)        DLL when LCR.DLAB=1
  1  IER                              DLM when LCR.DLAB=1
  2  IIR (read) / FCR (write)
  3  LCR    4  MCR    5  LSR    6  MSR    7  SCR

What Linux relies on, and this model does:
- autoconfig(): IER keeps exactly its low 4 bits; SCR reads back; loopback (MCR.LOOP) routes
  MCR.RTS/DTR/OUT1/OUT2 to MSR.CTS/DSR/RI/DCD (the probe writes LOOP|RTS|OUT2 and wants
  MSR & 0xF0 == 0x90) and THR to RBR; with FCR.0 set IIR reads 0xC? (16550A, 16-byte FIFO),
  IIR bit 4/5 and IER bit 6 never stick (so it is neither an NS16550A, a 16750 nor an XScale).
- THRE interrupt: pending when THR becomes empty or IER.THRI goes 0->1 with THR empty;
  cleared by reading IIR while it is the reported source, or by writing THR (datasheet
  table "Interrupt Control Functions"). Transmission is instant, so each THR write lowers
  and re-raises the line: a fresh ISA edge per byte. Without this interrupt Linux
  user-space output never appears (the tty layer waits for THRE to send).
- IIR priority: line status > received data > THR empty > modem status.
- LSR: DR while the receive FIFO holds data, THRE|TEMT always (the transmitter never
  lags), OE after a loopback overrun, cleared by reading LSR.

While the UART is quiet, a THR write has no effect the guest can see but the byte on the
console, and the VMM lets KVM queue those writes instead of exiting for each
(KVM_CAP_COALESCED_PIO, vmm/coalesced.py; ``watch_quiet`` says when). Quiet: IER 0 (no
interrupt can tell the guest anything), no loopback, DLAB clear (offset 0 is THR), and
the guest has read LSR since it last wrote IER, LCR or MCR. That is Linux's console
write: it clears IER, polls LSR before each byte and once after the last, then restores
IER; each of those reads and writes exits, and the exit takes the queued bytes first.
The LSR condition leaves out a guest that writes THR blind and then runs on without
exiting (the tests' tiny kernels): its bytes would stay queued.

Host input (``feed``) is queued without the 16-byte limit of a real FIFO, so a paste is
not dropped while the guest is slow; only loopback traffic overruns as on real hardware.
The receive interrupt reports IIR 0x04 for any data (no character-timeout 0x0C): Linux
treats both alike, and it avoids a timer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from qumran.vmm.devices.irq import IrqLine, IrqOutput

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time
    from typing import Any

COM1_BASE = 0x3F8
COM1_IRQ = 4
UART_PORTS = 8

# IER bits
IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
# IIR values (bits 3..0) and the FIFO-enabled bits 7..6
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_FIFO_ENABLED = 0xC0
# FCR bits
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
# LCR / MCR bits
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# LSR bits
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
LSR_ERRORS = 0x1E  # OE | PE | FE | BI
# MSR bits
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_DELTAS = 0x0F

FIFO_DEPTH = 16
HOST_RX_LIMIT = 64 * 1024
# Outside loopback the "modem" is always there and ready: CTS, DSR and DCD asserted.
_MODEM_READY = MSR_CTS | MSR_DSR | MSR_DCD


class Serial16550:
    """One 16550A UART. Thread-safe: vCPU threads and the console thread share it.

    ``out`` receives each transmitted byte; it is called with the UART's lock held (that
    keeps bytes from several vCPUs in order), so it must not call back into the UART.
    """

    def __init__(self, irq: IrqLine, out: Callable[[bytes], None]) -> None:
        self._irq = IrqOutput(irq)
        self._out = out
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self._ier = 0
        self._lcr = 0x03  # 8N1, what firmware leaves behind
        self._mcr = MCR_OUT2
        self._scr = 0
        self._dll, self._dlm = 0x0C, 0x00  # divisor 12: 9600 baud
        self._fifo = False
        self._lsr_errors = 0
        self._msr_deltas = 0
        self._thr_pending = False
        self._quiet_watch: Callable[[bool], None] | None = None
        self._lsr_polled = False

    def watch_quiet(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(quiet)`` now and whenever the UART may have become quiet or
        stopped being so (see the module's docstring; the watcher keeps what it last saw);
        with the UART's lock held, like ``out``."""
        with self._lock:
            self._quiet_watch = callback
            callback(self._is_quiet())

    def _is_quiet(self) -> bool:
        return (
            self._lsr_polled
            and self._ier == 0
            and not self._mcr & MCR_LOOP
            and not self._lcr & LCR_DLAB
        )

    def _check_quiet(self) -> None:
        if self._quiet_watch is not None:
            self._quiet_watch(self._is_quiet())

    # -- host side -----------------------------------------------------------------

    def feed(self, data: bytes) -> int:
        """Queue host input for the guest; returns how many bytes fit (the rest is dropped)."""
        with self._lock:
            room = HOST_RX_LIMIT - len(self._rx)
            taken = data[: max(room, 0)]
            self._rx.extend(taken)
            self._update_irq()
            return len(taken)

    # -- snapshot (vCPUs paused) ----------------------------------------------------

    _STATE = ("_ier", "_lcr", "_mcr", "_scr", "_dll", "_dlm", "_fifo", "_lsr_errors",
              "_msr_deltas", "_thr_pending")  # fmt: skip

    def save_state(self) -> dict[str, object]:
        with self._lock:
            return {**{n: getattr(self, n) for n in self._STATE}, "rx": list(self._rx)}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            for n in self._STATE:
                setattr(self, n, state[n])
            self._rx = deque(state["rx"])
            self._update_irq()
            self._check_quiet()

    # -- bus side ------------------------------------------------------------------

    def pio_read(self, offset: int, size: int) -> int:
        with self._lock:
            if size == 1 and 0 <= offset < UART_PORTS:  # the only access Linux makes
                value = self._read(offset)
            else:
                value = 0
                for i in range(size):
                    reg = offset + i
                    byte = self._read(reg) if 0 <= reg < UART_PORTS else 0xFF
                    value |= byte << (8 * i)
            self._update_irq()
            return value

    def pio_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if size == 1 and 0 <= offset < UART_PORTS:
                self._write(offset, value & 0xFF)
            else:
                for i in range(size):
                    reg = offset + i
                    if 0 <= reg < UART_PORTS:
                        self._write(reg, (value >> (8 * i)) & 0xFF)
            self._update_irq()
            if offset != 0 or size != 1:  # IER, LCR or MCR may have changed (not by THR)
                self._check_quiet()

    # -- registers (called with the lock held) --------------------------------------

    def _read(self, reg: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if reg == 0:
            return self._dll if dlab else self._pop_rx()
        if reg == 1:
            return self._dlm if dlab else self._ier
        if reg == 2:
            return self._read_iir()
        if reg == 3:
            return self._lcr
        if reg == 4:
            return self._mcr
        if reg == 5:
            lsr = self._lsr()
            self._lsr_errors = 0
            if not self._lsr_polled:
                self._lsr_polled = True
                self._check_quiet()
            return lsr
        if reg == 6:
            msr = self._modem_status() | self._msr_deltas
            self._msr_deltas = 0
            return msr
        return self._scr

    def _write(self, reg: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if reg in (1, 3, 4):
            self._lsr_polled = False  # quiet again only after the next LSR read
        if reg == 0:
            if dlab:
                self._dll = value
            else:
                self._transmit(value)
        elif reg == 1:
            if dlab:
                self._dlm = value
            else:
                self._write_ier(value & 0x0F)
        elif reg == 2:
            self._write_fcr(value)
        elif reg == 3:
            self._lcr = value
        elif reg == 4:
            self._write_mcr(value & 0x1F)
        elif reg == 7:
            self._scr = value
        # LSR and MSR writes are factory-test only: ignored.

    def _pop_rx(self) -> int:
        return self._rx.popleft() if self._rx else 0

    def _lsr(self) -> int:
        lsr = LSR_THRE | LSR_TEMT | self._lsr_errors
        if self._rx:
            lsr |= LSR_DR
        return lsr

    def _interrupt_id(self) -> int:
        """The highest-priority enabled pending source (datasheet IIR table)."""
        if self._ier & IER_RLSI and self._lsr_errors:
            return IIR_RLSI
        if self._ier & IER_RDI and self._rx:
            return IIR_RDI
        if self._ier & IER_THRI and self._thr_pending:
            return IIR_THRI
        if self._ier & IER_MSI and self._msr_deltas:
            return IIR_MSI
        return IIR_NO_INT

    def _read_iir(self) -> int:
        iid = self._interrupt_id()
        if iid == IIR_THRI:
            self._thr_pending = False  # reading IIR acknowledges THRE (only THRE)
        return iid | (IIR_FIFO_ENABLED if self._fifo else 0)

    def _write_ier(self, value: int) -> None:
        if value & IER_THRI and not self._ier & IER_THRI:
            self._thr_pending = True  # THR is always empty: enabling THRI fires at once
        elif not value & IER_THRI:
            self._thr_pending = False
        self._ier = value

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo or value & FCR_CLEAR_RX:
            self._rx.clear()  # changing FCR.0 resets both FIFOs (datasheet, FCR bit 0)
        self._fifo = enable

    def _write_mcr(self, value: int) -> None:
        before = self._modem_status()
        self._mcr = value
        after = self._modem_status()
        changed = before ^ after
        if changed & MSR_CTS:
            self._msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_deltas |= MSR_DDSR
        if before & MSR_RI and not after & MSR_RI:
            self._msr_deltas |= MSR_TERI  # trailing edge of RI
        if changed & MSR_DCD:
            self._msr_deltas |= MSR_DDCD

    def _modem_status(self) -> int:
        if not self._mcr & MCR_LOOP:
            return _MODEM_READY
        m = self._mcr
        return (
            (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )

    def _transmit(self, byte: int) -> None:
        self._thr_pending = False
        self._update_irq()  # THR written: THRE interrupt clears, the line may drop ...
        if self._mcr & MCR_LOOP:
            if len(self._rx) < (FIFO_DEPTH if self._fifo else 1):
                self._rx.append(byte)
            else:
                self._lsr_errors |= LSR_OE
        else:
            self._out(bytes((byte,)))
        self._thr_pending = True  # ... and rises again: the byte left at once

    def _update_irq(self) -> None:
        self._irq.drive(self._interrupt_id() != IIR_NO_INT)

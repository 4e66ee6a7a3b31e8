"""How much each qumran-vmm device path costs: Python time per port access, exits per action.

Pure Python, no KVM: the devices sit on a PioBus exactly as the VMM wires them, the IRQ lines
count KVM_IRQ_LINE calls instead of making them. Two tables:

1. ns per bus access (the device's share of one port-I/O exit; the exit round trip itself
   is ~13.5 us on the host's /dev/kvm, ~130 us inside the KVM test host);
2. exits per guest-level action, replaying what the Linux 6.1 drivers do (8250 console
   and tty paths, CMOS time read, ACPI power button), plus the IRQ line calls it causes.

Run: .venv/bin/python bench/vmm_devices.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qumran.vmm.devices import PioBus
from qumran.vmm.devices.legacy import I8042, AcpiPm, CmosRtc, PciConfigStub, Serial16550

COM1 = 0x3F8
THR, IER, IIR, LSR, MSR = COM1, COM1 + 1, COM1 + 2, COM1 + 5, COM1 + 6


@dataclass
class Line:
    calls: int = 0

    def set_level(self, high: bool) -> None:
        self.calls += 1


@dataclass
class Machine:
    bus: PioBus = field(default_factory=PioBus)
    com1: Line = field(default_factory=Line)
    sci: Line = field(default_factory=Line)
    out: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.uart = Serial16550(self.com1, self.out.extend)
        self.pm = AcpiPm(self.sci, lambda: None, lambda: None)
        kbc = I8042(lambda: None)
        self.bus.register(COM1, 8, self.uart)
        self.bus.register(0x70, 2, CmosRtc())
        self.bus.register(0x60, 1, kbc)
        self.bus.register(0x64, 1, kbc)
        self.bus.register(0x600, 9, self.pm)
        self.bus.register(0xCF8, 8, PciConfigStub())


def ns_per_call(fn: Callable[[], object], n: int = 20_000, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def access_costs() -> dict[str, float]:
    m = Machine()
    bus = m.bus
    m.bus.write(0x70, 1, 0x00)
    results = {
        "unclaimed port read (0x80)": ns_per_call(lambda: bus.read(0x80, 1)),
        "UART LSR read": ns_per_call(lambda: bus.read(LSR, 1)),
        "UART IIR read": ns_per_call(lambda: bus.read(IIR, 1)),
        "UART THR write, THRI off": ns_per_call(lambda: bus.write(THR, 1, 0x41)),
    }
    bus.write(IER, 1, 0x02)
    results["UART THR write, THRI on (2 IRQ line calls)"] = ns_per_call(
        lambda: bus.write(THR, 1, 0x41)
    )
    bus.write(IER, 1, 0x00)
    results["UART direct pio_read (no bus)"] = ns_per_call(lambda: m.uart.pio_read(5, 1))
    results["RTC data read (seconds)"] = ns_per_call(lambda: bus.read(0x71, 1))
    results["PM1_STS read"] = ns_per_call(lambda: bus.read(0x600, 2))
    results["i8042 status read"] = ns_per_call(lambda: bus.read(0x64, 1))
    results["PCI CONFIG_DATA read"] = ns_per_call(lambda: bus.read(0xCFC, 4))
    return results


class Counter:
    def __init__(self, m: Machine) -> None:
        self.m, self.exits = m, 0

    def inb(self, port: int) -> int:
        self.exits += 1
        return self.m.bus.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.exits += 1
        self.m.bus.write(port, 1, value)


def console_line(c: Counter, text: bytes) -> None:
    """serial8250_console_write: IER off, per char wait THRE + THR, wait idle, IER back."""
    ier = c.inb(IER)
    c.outb(IER, 0)
    for ch in text:
        while not c.inb(LSR) & 0x20:
            pass
        c.outb(THR, ch)
    while c.inb(LSR) & 0x60 != 0x60:
        pass
    c.outb(IER, ier)


def tty_write(c: Counter, text: bytes) -> None:
    """start_tx sets THRI; each interrupt: IIR, LSR, MSR, up to 16 THR; stop_tx; final IIR."""
    pending = bytearray(text)
    c.outb(IER, 0x05 | 0x02)
    while True:
        iir = c.inb(IIR)
        if iir & 0x01:
            break
        c.inb(LSR)
        c.inb(MSR)
        for _ in range(min(16, len(pending))):
            c.outb(THR, pending.pop(0))
        if not pending:
            c.outb(IER, 0x05)


def cmos_time(c: Counter) -> None:
    """mc146818_get_time: UIP check, 7 time registers, century, control, UIP again."""
    for reg in (0x0A, 0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0B, 0x0A):
        c.outb(0x70, reg)
        c.inb(0x71)


def power_button(c: Counter, m: Machine) -> None:
    """Host presses; the guest's SCI handler reads PM1_STS and PM1_EN, clears the bit."""
    m.pm.press_power_button()
    c.exits += 3
    m.bus.read(0x600, 2)
    m.bus.read(0x602, 2)
    m.bus.write(0x600, 2, 1 << 8)


def exit_costs() -> dict[str, tuple[int, int]]:
    results: dict[str, tuple[int, int]] = {}
    line = b"[    1.234567] a typical 60-character kernel log line here\n"

    def measure(name: str, action: Callable[[Counter, Machine], None]) -> None:
        m = Machine()
        m.bus.write(0x602, 2, 1 << 8)  # PWRBTN_EN, as the ACPI button driver sets it
        m.com1.calls = m.sci.calls = 0
        c = Counter(m)
        action(c, m)
        results[name] = (c.exits, m.com1.calls + m.sci.calls)

    measure("printk line, 60 chars (polled console)", lambda c, m: console_line(c, line))
    measure("tty write, 60 chars (THRE interrupts)", lambda c, m: tty_write(c, line))
    measure("CMOS date/time read", lambda c, m: cmos_time(c))
    measure("ACPI power button event", power_button)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    access, exits = access_costs(), exit_costs()
    if args.json:
        print(json.dumps({"ns_per_access": access, "exits_and_irq_calls": exits}, indent=2))
        return
    print(f"{'device path':48} {'ns/access':>10}")
    for name, ns in access.items():
        print(f"{name:48} {ns:10.0f}")
    print()
    print(f"{'guest action':48} {'exits':>6} {'IRQ line calls':>15}")
    for name, (n, irq) in exits.items():
        print(f"{name:48} {n:6d} {irq:15d}")


if __name__ == "__main__":
    main()

"""The i8042 keyboard controller, just enough for the guest to reset the machine through it.

Ports: 0x60 data, 0x64 status (read) / command (write). Register the one device at both
ports (``bus.register(0x60, 1, kbc); bus.register(0x64, 1, kbc)``): the bus gives it
offsets 0 and 4. Bits and commands: IBM PC/AT Technical Reference, "Keyboard Controller";
Linux ``drivers/input/serio/i8042.h``.

No keyboard or mouse is attached and no interrupt is raised: the FADT leaves the "8042"
boot-architecture flag clear, so Linux does not probe for PS/2 devices at all. What matters
is that the input buffer always reads empty (Linux's ``kb_wait`` before a keyboard reset
otherwise spins tens of thousands of exits) and that command 0xFE, or clearing output-port
bit 0, resets the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time
    from typing import Any

I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64
_DATA, _COMMAND = 0, I8042_COMMAND_PORT - I8042_DATA_PORT

# Status register bits
STATUS_OBF = 0x01  # output buffer full: a byte waits at port 0x60
STATUS_SYS = 0x04  # system flag: set once the self-test passed
STATUS_CMD = 0x08  # last write went to the command port
STATUS_UNLOCKED = 0x10  # keyboard not inhibited

CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_DISABLE_AUX, CMD_ENABLE_AUX = 0xA7, 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_DISABLE_KBD, CMD_ENABLE_KBD = 0xAD, 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_RESET = 0xFE

CTR_KBD_DISABLED = 0x10
CTR_AUX_DISABLED = 0x20
OUTPUT_PORT_RESET = 0x01  # active low: writing 0 here resets the CPU
SELF_TEST_OK = 0x55
INTERFACE_OK = 0x00


class I8042:
    """Keyboard controller without keyboard. Thread-safe."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._ctr = 0x00
        self._output_port = 0x03  # reset line high, A20 enabled
        self._out: int | None = None  # the byte waiting in the output buffer
        self._pending: int | None = None  # command waiting for its data byte
        self._status = STATUS_SYS | STATUS_UNLOCKED

    _STATE = ("_ctr", "_output_port", "_out", "_pending", "_status")

    def save_state(self) -> dict[str, object]:
        with self._lock:
            return {n: getattr(self, n) for n in self._STATE}

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            for n in self._STATE:
                setattr(self, n, state[n])

    def pio_read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == _COMMAND:
                return self._status | (STATUS_OBF if self._out is not None else 0)
            if offset == _DATA:
                value, self._out = (self._out or 0), None
                return value
        return (1 << (8 * size)) - 1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == _COMMAND:
                self._status |= STATUS_CMD
                reset = self._command(value)
            elif offset == _DATA:
                self._status &= ~STATUS_CMD
                reset = self._data(value)
            else:
                reset = False
        if reset:
            self._on_reset()  # outside the lock: the VMM may tear things down from here

    def _command(self, cmd: int) -> bool:
        """Run a controller command; True if it resets the machine."""
        self._pending = None
        if cmd == CMD_READ_CTR:
            self._out = self._ctr
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
            self._pending = cmd
        elif cmd == CMD_SELF_TEST:
            self._out = SELF_TEST_OK
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self._out = INTERFACE_OK
        elif cmd == CMD_DISABLE_KBD:
            self._ctr |= CTR_KBD_DISABLED
        elif cmd == CMD_ENABLE_KBD:
            self._ctr &= ~CTR_KBD_DISABLED
        elif cmd == CMD_DISABLE_AUX:
            self._ctr |= CTR_AUX_DISABLED
        elif cmd == CMD_ENABLE_AUX:
            self._ctr &= ~CTR_AUX_DISABLED
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._out = self._output_port
        elif cmd >= 0xF0:
            # 0xF0-0xFF pulse output-port lines whose bit is 0 in the low nibble; bit 0 is
            # the CPU reset line, so 0xFE (the classic reset) and every even value reset.
            return not cmd & OUTPUT_PORT_RESET
        return False

    def _data(self, value: int) -> bool:
        """A byte written to port 0x60: the argument of a pending command, else dropped."""
        pending, self._pending = self._pending, None
        if pending == CMD_WRITE_CTR:
            self._ctr = value
        elif pending == CMD_WRITE_OUTPUT_PORT:
            self._output_port = value
            return not value & OUTPUT_PORT_RESET
        # No keyboard is attached: bytes meant for it get no answer, as if unplugged.
        return False

"""A vCPU thread is held only where its state is whole: after a port or MMIO exit, KVM
finishes the instruction (the value of an IN reaches RAX, RIP moves past it) in the next
KVM_RUN, so a pause must go through one more KVM_RUN (with ``immediate_exit``, which runs
no guest instruction) before the vCPU counts as held. Otherwise a snapshot saves the
vCPU still at an instruction whose device side effect already happened, and the restored
guest does it again: a UART's IIR read twice acknowledges the THRE interrupt twice, and
the guest waits for that interrupt for ever.

The vCPU here is a stand-in that keeps KVM_RUN's contract (api.rst, "KVM_EXIT_IO ...
complete only after userspace has re-entered the kernel with KVM_RUN"); the thread, the
bus and the kick signal are the VMM's own."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from qumran.kvm.exits import INTERRUPTED, IoIn, IoOut, MmioRead, MmioWrite, VcpuExit
from qumran.vmm.devices import PioBus
from qumran.vmm.events import GuestEventNotice
from qumran.vmm.vcpu import KICK_SIGNAL, VcpuThread, install_kick_handler

PORT = 0x3FA
MMIO = 0xE000_0000
DATA_OFFSET = 4096


class StandInVcpu:
    """KVM_RUN for one vCPU: the scripted exits, then the guest runs until kicked."""

    id = 0

    def __init__(self, script: list[VcpuExit]) -> None:
        self.run_page = bytearray(8192)
        self._script = list(script)
        self._kicked = threading.Event()
        self.in_guest = threading.Event()
        self.incomplete: VcpuExit | None = None  # the exit KVM still has to finish
        self.completed: list[VcpuExit] = []  # finished by a later KVM_RUN, in order
        self.runs = 0

    def run(self) -> VcpuExit:
        self.runs += 1
        if self.incomplete is not None:  # complete_userspace_io, before anything else
            self.completed.append(self.incomplete)
            self.incomplete = None
        if self._kicked.is_set():  # immediate_exit: EINTR before the guest runs
            return INTERRUPTED
        if self._script:
            self.incomplete = self._script.pop(0)
            return self.incomplete
        self.in_guest.set()
        self._kicked.wait()  # in the guest until the kick
        return INTERRUPTED

    def set_immediate_exit(self, value: bool) -> None:
        if value:
            self._kicked.set()
        else:
            self._kicked.clear()

    def complete_mmio_read(self, data: bytes) -> None:
        return None


class Blocking:
    """A device whose access waits until the test lets it go: the pause lands while the
    vCPU thread is out of KVM_RUN handling the exit."""

    def __init__(self) -> None:
        self.entered, self.proceed = threading.Event(), threading.Event()
        self.accesses = 0

    def _access(self) -> None:
        self.accesses += 1
        self.entered.set()
        assert self.proceed.wait(10)

    def pio_read(self, offset: int, size: int) -> int:
        self._access()
        return 0xC1

    def pio_write(self, offset: int, size: int, value: int) -> None:
        self._access()

    def mmio_read(self, addr: int, length: int) -> bytes:
        self._access()
        return bytes(length)

    def mmio_write(self, addr: int, data: bytes) -> None:
        self._access()


@pytest.fixture(autouse=True)
def kick_handler() -> Iterator[None]:
    before = signal.getsignal(KICK_SIGNAL)
    install_kick_handler()
    yield
    signal.signal(KICK_SIGNAL, before)


def _thread(script: list[VcpuExit]) -> tuple[StandInVcpu, Blocking, VcpuThread]:
    vcpu, device, bus = StandInVcpu(script), Blocking(), PioBus()
    bus.register(PORT, 1, device)
    notices: list[GuestEventNotice] = []
    thread = VcpuThread(vcpu, bus, notices.append, device)  # type: ignore[arg-type]
    return vcpu, device, thread


EXITS = [IoIn(PORT, 1, 1, DATA_OFFSET), IoOut(PORT, 1, 1, b"\x07"), MmioRead(MMIO, 4),
         MmioWrite(MMIO, b"\x01\x00\x00\x00")]  # fmt: skip


@pytest.mark.parametrize("exit_", EXITS, ids=["in", "out", "mmio-read", "mmio-write"])
def test_a_pause_during_an_exit_is_held_only_once_kvm_has_completed_it(exit_: VcpuExit) -> None:
    vcpu, device, thread = _thread([exit_])
    thread.start()
    try:
        assert device.entered.wait(10)
        thread.pause()  # while the exit is being handled, outside KVM_RUN
        device.proceed.set()
        assert thread.wait_held(10)
        assert vcpu.completed == [exit_] and vcpu.incomplete is None
        assert device.accesses == 1
        thread.resume()  # and it runs on from there
        thread.pause()
        assert thread.wait_held(10)
        assert vcpu.completed == [exit_] and device.accesses == 1
    finally:
        device.proceed.set()
        thread.stop()
        thread.join(10)
    assert not thread._thread.is_alive()


def test_a_pause_in_the_guest_is_held_after_one_interrupted_run() -> None:
    vcpu, device, thread = _thread([])
    thread.start()
    try:
        assert vcpu.in_guest.wait(10)
        thread.pause()
        assert thread.wait_held(10)
        assert vcpu.completed == [] and device.accesses == 0
        assert vcpu.runs == 1  # the run the kick ended; nothing more was needed
    finally:
        thread.stop()
        thread.join(10)
    assert not thread._thread.is_alive()


def test_a_vcpu_started_paused_is_held_before_it_ever_runs() -> None:
    vcpu, _, thread = _thread([IoIn(PORT, 1, 1, DATA_OFFSET)])
    thread.start(paused=True)
    try:
        assert thread.wait_held(10)
        assert vcpu.runs == 0
    finally:
        thread.stop()
        thread.join(10)

"""What every vCPU was doing when the guest crashed, for the log.

On a triple fault or any exit the VMM does not expect, the main loop pauses the other
vCPUs (a vCPU's registers can be read only outside KVM_RUN) and writes, per vCPU: its
general registers, its special registers (segments, descriptor tables, control
registers, EFER, APIC base, pending interrupts), its multiprocessing state and its last
exits, oldest first. The lines start with ``crash:`` so they are easy to find in a VM's
log among everything else.

On AMD, KVM answers a shutdown (a triple fault) by re-initialising the vCPU before it
returns to us (the VMCB is undefined after a shutdown intercept: arch/x86/kvm/svm/svm.c,
shutdown_interception), so the registers read then are the reset state, and the dump
says so; only the exits before it tell where the guest was. On Intel they are the
fault's.
"""

from __future__ import annotations

from qumran.kvm import KvmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from qumran.vmm.vcpu import VcpuThread

# KVM_MP_STATE_* (include/uapi/linux/kvm.h)
MP_STATES = ("runnable", "uninitialized", "init-received", "halted", "sipi-received",
             "stopped", "check-stop", "operating", "load")  # fmt: skip
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")  # fmt: skip
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
RESET_RIP = 0xFFF0  # where a vCPU starts after INIT, in real mode


def describe_exit(exit_: object) -> str:
    """One exit in a few words: its kind and where (port, address)."""
    kind = type(exit_).__name__
    fields = []
    for name in ("port", "addr", "size", "length", "type_", "reason", "suberror"):
        value = getattr(exit_, name, None)
        if isinstance(value, int):
            fields.append(f"{name.rstrip('_')}={value:#x}")
    return f"{kind}({', '.join(fields)})" if fields else kind


def _runs(exits: Iterable[object]) -> str:
    """The exits described, repeats folded: ``IoOut(port=0x3f8, size=0x1) x11``."""
    texts: list[str] = []
    counts: list[int] = []
    for text in map(describe_exit, list(exits)):
        if texts and texts[-1] == text:
            counts[-1] += 1
        else:
            texts.append(text)
            counts.append(1)
    return ", ".join(t if n == 1 else f"{t} x{n}" for t, n in zip(texts, counts, strict=True))


def vcpu_lines(thread: VcpuThread) -> list[str]:
    """The dump of one vCPU (whose thread is out of KVM_RUN)."""
    vcpu = thread.vcpu
    head = f"crash: vCPU {vcpu.id} ({thread.state.value})"
    try:
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
    except KvmError as exc:
        return [f"{head}: registers unreadable: {exc}"]
    lines = [head]
    gprs = [f"{n}={getattr(regs, n):016x}" for n in GPRS]
    lines += ["crash:   " + " ".join(gprs[i : i + 6]) for i in range(0, len(gprs), 6)]
    for name in SEGMENTS:
        seg = getattr(sregs, name)
        lines.append(
            f"crash:   {name:<3} sel={seg.selector:04x} base={seg.base:016x} "
            f"limit={seg.limit:08x} type={seg.type:x} p={seg.present} dpl={seg.dpl} "
            f"db={seg.db} s={seg.s} l={seg.l} g={seg.g} unusable={seg.unusable}"
        )
    lines.append(
        f"crash:   gdt={sregs.gdt.base:016x}/{sregs.gdt.limit:04x} "
        f"idt={sregs.idt.base:016x}/{sregs.idt.limit:04x}"
    )
    lines.append(
        f"crash:   cr0={sregs.cr0:x} cr2={sregs.cr2:x} cr3={sregs.cr3:x} cr4={sregs.cr4:x} "
        f"cr8={sregs.cr8:x} efer={sregs.efer:x} apic_base={sregs.apic_base:x}"
    )
    if regs.rip == RESET_RIP and not sregs.cr0 & 1:
        lines.append(
            "crash:   (the reset state, not the fault's: KVM on AMD re-initialises a vCPU "
            "that shuts down; its last exits are what is left of the fault)"
        )
    pending = [i * 64 + b for i, word in enumerate(sregs.interrupt_bitmap)
               for b in range(64) if word >> b & 1]  # fmt: skip
    try:
        mp = vcpu.get_mp_state()
        mp_name = MP_STATES[mp] if mp < len(MP_STATES) else str(mp)
    except KvmError:
        mp_name = "unknown"
    lines.append(f"crash:   mp_state={mp_name} pending_interrupts={pending or 'none'}")
    lines.append(f"crash:   last exits (oldest first): {_runs(thread.recent) or 'none'}")
    return lines


def dump(threads: Iterable[VcpuThread]) -> list[str]:
    lines: list[str] = []
    for thread in threads:
        lines += vcpu_lines(thread)
    return lines

"""The system calls each qumran-vmm thread may make (seccomp allow-lists, confine.py).

Found by tracing, not guessed: bench/vmm_syscalls.py runs the VMM under ``strace -ff``
through boot with 3 vCPUs, disk writes and reads (O_DIRECT, fsync), virtio-rng, the
network on passt, the control socket, a guest reboot and power-off, and prints the calls
of each thread role (2026-12-05, KVM test host, Python 3.11, Debian 12); the vCPU list
again with ``--vhost-user`` (a qcow2 disk through qemu-storage-daemon: the vCPU threads
hand its rings over on the socket, ``sendmsg``/``recvmsg``, waiting with ``poll``). The
traced calls include those a thread makes before its filter is loaded (rseq,
set_robust_list, prctl for its name); they stay, harmless.

Added to a traced list, each for a path of the code that the trace did not happen to
drive, named here:
- every role: ``rt_sigreturn``, the return from a signal handler: a process-wide signal
  (SIGTERM, SIGCHLD) may be delivered to any thread that does not block it; ``write`` and
  ``exit_group``, the SIGSYS handler's message and end (confine.py), which run on the
  thread that made the forbidden call, under its filter; ``brk`` and ``mremap``, glibc
  malloc's other ways to get memory (the main arena, when a thread finds no arena of its
  own; growing a large block in place);
- io: ``epoll_ctl`` (a device starts or stops watching its back end from the I/O thread:
  passt's socket when the guest runs out of receive buffers), ``poll`` (passt's send
  waiting for room), ``writev`` (a TAP's transmit: the trace ran on passt);
- vcpu: ``close``, the inflight memfd of a vhost-user disk let go when the guest's driver
  resets the device (the trace's guest never did);
- blk: ``preadv2``, ``pwritev2`` (the helpers move large requests; the trace's were small
  enough for the I/O thread's one-transfer path, which made these calls there).

Allowed with one argument checked (:data:`ARG_RULES`):
- io: ``ioctl`` with request ``KVM_IRQ_LINE`` only: a device's INTx line, raised from the
  I/O thread when the guest's driver runs without MSI-X (``pci=nomsi``, or a driver that
  never enables it). The trace's guest used MSI-X, whose interrupts are irqfd writes, so
  the INTx tests of the KVM tier found this one.
"""

from __future__ import annotations

from qumran.kvm.constants import KVM_IRQ_LINE

_COMMON = ("rt_sigreturn", "write", "exit_group", "brk", "mremap")
VCPU = ("clock_gettime", "epoll_ctl", "exit", "futex", "gettid", "ioctl", "madvise", "mmap",
        "mprotect", "munmap", "poll", "prctl", "read", "recvfrom", "recvmsg", "rseq",
        "rt_sigprocmask", "rt_sigreturn", "sendmsg", "sendto", "set_robust_list", "write",
        "close", *_COMMON)  # fmt: skip
IO = ("clock_gettime", "epoll_wait", "exit", "fsync", "futex", "gettid", "madvise", "mmap",
      "mprotect", "munmap", "prctl", "preadv2", "pwritev2", "read", "readv", "recvfrom", "rseq",
      "rt_sigprocmask", "sendmsg", "set_robust_list", "write",
      "epoll_ctl", "poll", "writev", *_COMMON)  # fmt: skip
BLK = ("clock_gettime", "exit", "futex", "gettid", "madvise", "mmap", "mprotect", "munmap",
       "prctl", "rseq", "rt_sigprocmask", "set_robust_list",
       "preadv2", "pwritev2", *_COMMON)  # fmt: skip

ALLOWED = {"vcpu": VCPU, "io": IO, "blk": BLK}
# role -> call -> (argument index, the values it may have)
ARG_RULES: dict[str, dict[str, tuple[int, tuple[int, ...]]]] = {
    "io": {"ioctl": (1, (KVM_IRQ_LINE,))},
}
ALL_NAMES = tuple(sorted(set(VCPU) | set(IO) | set(BLK)))

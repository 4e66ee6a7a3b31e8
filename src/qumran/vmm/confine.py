"""Confinement of the VMM process: seccomp filters per thread, no_new_privs, limits (no
core file, at most :data:`MAX_FILES` open files).

A hostile guest's way out is a bug in the device code it drives: the vCPU threads (every
port and MMIO access) and the device threads (every virtqueue). Each of them, as it
starts, loads a seccomp filter (libseccomp's Python bindings, Debian ``python3-seccomp``)
allowing only the system calls of its role, as found by tracing those threads through the
guest's boot and I/O paths (bench/vmm_syscalls.py; the lists in :mod:`qumran.vmm.syscalls`).
Anything else raises SIGSYS (SCMP_ACT_TRAP), whose handler writes one line naming the call
and the thread, and ends the process: a guest that reaches such a call has found a bug, and
the VM must not go on.

libseccomp's module is a system package: the VMM runs from a virtualenv that does not see
system packages, so when ``import seccomp`` fails the extension is loaded from Debian's
dist-packages by its file name (the same interpreter version: the suffix is this
interpreter's, so a module built for another one is never picked up). No .pth file and no
``--system-site-packages``: nothing else of the system's comes along.

``QUMRAN_VMM_SECCOMP=off`` leaves the filters out (for tracing the calls anew). For tests
only, ``QUMRAN_VMM_SECCOMP_PROBE=ROLE`` makes the first thread of that role call
``ptrace``, which no list allows, and ``ROLE:ioctl`` an ioctl its argument rule refuses.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import threading

from qumran.vmm.log import get_logger

log = get_logger(__name__)

PR_SET_NO_NEW_PRIVS = 38
SYS_PTRACE = 101  # x86-64
SYS_IOCTL = 16  # x86-64
TCGETS = 0x5401  # asm-generic/ioctls.h
SYSTEM_MODULES = "/usr/lib/python3/dist-packages"
EXIT_FORBIDDEN = 1
MAX_FILES = 4096  # RLIMIT_NOFILE of a VMM process (prepare)
_libc = ctypes.CDLL(None, use_errno=True)
_names: dict[int, str] = {}  # syscall number -> name, filled before any filter is loaded
_roles: dict[int, str] = {}  # native thread id -> role, for the message
_probed: set[str] = set()
_seccomp: object | None = None
_active = False  # set by prepare(): filters only in a VMM process, never in a test's


def enabled() -> bool:
    return os.environ.get("QUMRAN_VMM_SECCOMP", "on") != "off"


def load_seccomp() -> object:
    """The ``seccomp`` module: importable, or Debian's python3-seccomp by its path."""
    global _seccomp
    if _seccomp is not None:
        return _seccomp
    try:
        import seccomp  # type: ignore[import-not-found]

        _seccomp = seccomp
        return seccomp
    except ImportError:
        pass
    import importlib.machinery
    import importlib.util

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(SYSTEM_MODULES, "seccomp" + suffix)
        spec = importlib.util.spec_from_file_location("seccomp", path)
        if spec is None or spec.loader is None or not os.path.exists(path):
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["seccomp"] = module
        _seccomp = module
        return module
    raise RuntimeError(
        "libseccomp's Python module is missing (Debian: apt install python3-seccomp);"
        " or run with QUMRAN_VMM_SECCOMP=off"
    )


# --- the SIGSYS handler ------------------------------------------------------------------


class _SigInfo(ctypes.Structure):
    # siginfo_t for SIGSYS (asm-generic/siginfo.h): three ints, padding, then the union's
    # _sigsys member: void *_call_addr; int _syscall; unsigned int _arch.
    _fields_ = [("signo", ctypes.c_int), ("errno", ctypes.c_int), ("code", ctypes.c_int),
                ("pad", ctypes.c_int), ("call_addr", ctypes.c_void_p),
                ("syscall", ctypes.c_int), ("arch", ctypes.c_uint)]  # fmt: skip


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(_SigInfo), ctypes.c_void_p)


class _SigAction(ctypes.Structure):
    # glibc's struct sigaction on x86-64 (bits/sigaction.h), not the kernel's: the handler,
    # a 1024-bit mask, the flags, the restorer (glibc fills it in).
    _fields_ = [("handler", _HANDLER), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]  # fmt: skip


SA_SIGINFO = 0x4


def _on_sigsys(_signum: int, info: ctypes._Pointer[_SigInfo], _ctx: int) -> None:
    """Runs on the thread that made the call: name it, then end the process at once (the
    thread is in an unknown state; nothing else may run)."""
    nr = info.contents.syscall
    name = _names.get(nr, f"#{nr}")
    tid = threading.get_native_id()
    role = _roles.get(tid, "main")
    message = (f"qumran-vmm: {_vm_name}: forbidden system call {name} ({nr}) in the {role}"
               f" thread (tid {tid}): seccomp stopped the VMM\n")  # fmt: skip
    os.write(2, message.encode())
    os._exit(EXIT_FORBIDDEN)


_handler_ref = _HANDLER(_on_sigsys)  # kept alive: the kernel holds its address
_vm_name = ""


def _install_sigsys() -> None:
    act = _SigAction()
    act.handler = _handler_ref
    act.flags = SA_SIGINFO
    if _libc.sigaction(signal.SIGSYS, ctypes.byref(act), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGSYS)")


# --- process set-up (main thread, before any vCPU or device thread) -----------------------


def prepare(vm_name: str) -> None:
    """no_new_privs, resource limits, the SIGSYS handler and the names of the calls."""
    global _vm_name, _active
    _vm_name = vm_name
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_NO_NEW_PRIVS) failed: errno %d", ctypes.get_errno())
    # No core file: it would hold the guest's memory, readable by whoever reads the dumps.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Open files capped, hard limit too: device code a guest makes leak descriptors stops
    # at this, not at the owner's limit (shared with every other process of the owner's).
    # A VMM holds a few per device and queue: 16 queues of a vhost-user disk take 40.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = MAX_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_FILES)
    resource.setrlimit(resource.RLIMIT_NOFILE, (cap, cap))
    if not enabled():
        return
    from qumran.vmm.syscalls import ALL_NAMES

    seccomp = load_seccomp()
    resolve = seccomp.resolve_syscall  # type: ignore[attr-defined]
    arch = seccomp.Arch.NATIVE  # type: ignore[attr-defined]
    for name in (*ALL_NAMES, "ptrace"):
        try:
            _names[int(resolve(arch, name))] = name
        except (ValueError, RuntimeError):
            continue
    _install_sigsys()
    _active = True


def enter(role: str) -> None:
    """Load ``role``'s filter on the calling thread (a vCPU or device thread, at its start);
    nothing unless :func:`prepare` ran (the VMM's main), so device tests run unfiltered."""
    if not _active:
        return
    from qumran.vmm.syscalls import ALLOWED, ARG_RULES

    seccomp = load_seccomp()
    _roles[threading.get_native_id()] = role
    f = seccomp.SyscallFilter(defaction=seccomp.TRAP)  # type: ignore[attr-defined]
    for name in ALLOWED[role]:
        try:
            f.add_rule(seccomp.ALLOW, name)  # type: ignore[attr-defined]
        except (ValueError, RuntimeError):
            continue  # a call this kernel or libseccomp does not know
    for name, (index, values) in ARG_RULES.get(role, {}).items():
        for value in values:
            arg = seccomp.Arg(index, seccomp.EQ, value)  # type: ignore[attr-defined]
            f.add_rule(seccomp.ALLOW, name, arg)  # type: ignore[attr-defined]
    f.load()
    probe = os.environ.get("QUMRAN_VMM_SECCOMP_PROBE", "")
    if probe.partition(":")[0] == role and probe not in _probed:
        _probed.add(probe)
        if probe.endswith(":ioctl"):  # an ioctl the role's argument rule does not allow
            _libc.syscall(SYS_IOCTL, -1, TCGETS, 0)
        else:
            _libc.syscall(SYS_PTRACE, 0, 0, 0, 0)

"""The libvirt side: libvirtd + virtlogd (the system instance), domains of type ``qemu``.

The domain is the same machine Qumran's QEMU driver runs: q35, TCG, ``-cpu max``,
the same memory and vCPUs, direct kernel boot of the same files, a pvpanic device, one
serial port (to a file here) and nothing else libvirt would add by default (no USB
controller, no balloon). ACPI is switched on explicitly because libvirt turns it off
unless asked, and plain QEMU has it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path
from xml.sax.saxutils import escape

from vslib.measure import (
    BenchError,
    cpu_seconds,
    ensure_commands,
    now,
    pids_by_comm,
    process_started,
    run,
    wait_for_text,
)

URI = "qemu:///system"
VIRSH = ["virsh", "-c", URI]
DAEMONS = ("virtlogd", "libvirtd")  # in start order: libvirtd logs through virtlogd
MEMORY_DAEMONS = ("libvirtd", "virtlogd", "virtlockd")
QEMU_USER = "libvirt-qemu"  # Debian's build default for qemu.conf's `user`
KVM_DEVICE = Path("/dev/kvm")
BATCH = 25  # virsh commands per virsh process when defining or removing many domains


class LibvirtStack:
    def __init__(self, root: Path, kernel: Path, initrd: Path, cmdline: str) -> None:
        self.root = root
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.started: dict[str, int] = {}  # daemons this run started: name -> pid
        self.names: list[str] = []  # domains this run defined
        self.kvm_saved: tuple[int, int] | None = None  # /dev/kvm (mode, gid) to put back

    # --- the host -----------------------------------------------------------------------

    def ensure_kvm_access(self) -> None:
        """Give libvirt's QEMU user the /dev/kvm access udev would give it on Debian.

        With no udev here /dev/kvm stays 0600 root. libvirt then finds KVM "not available
        now" for its QEMU user while its probe saw KVM, throws its capability cache away on
        every call and re-probes QEMU (seconds each): defines and starts crawl or hang.
        Debian's udev rule makes the node 0660 root:kvm, and libvirt-qemu is in kvm. The
        old mode and group are put back by :meth:`restore_kvm_access`.
        """
        try:
            st = KVM_DEVICE.stat()
            user = pwd.getpwnam(QEMU_USER)
            kvm = grp.getgrnam("kvm")
        except (OSError, KeyError):
            return
        groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if QEMU_USER in g.gr_mem)}
        if st.st_mode & 0o006 == 0o006 or (st.st_gid in groups and st.st_mode & 0o060 == 0o060):
            return
        if kvm.gr_gid not in groups:
            return
        self.kvm_saved = (st.st_mode & 0o7777, st.st_gid)
        os.chown(KVM_DEVICE, -1, kvm.gr_gid)
        os.chmod(KVM_DEVICE, (st.st_mode & 0o7777) | 0o060)

    def restore_kvm_access(self) -> None:
        if self.kvm_saved is not None:
            mode, gid = self.kvm_saved
            os.chown(KVM_DEVICE, -1, gid)
            os.chmod(KVM_DEVICE, mode)
            self.kvm_saved = None

    # --- the daemons --------------------------------------------------------------------

    def ensure_installed(self) -> None:
        ensure_commands({"virsh": "libvirt-clients", "libvirtd": "libvirt-daemon-system"})

    def ensure_daemons(self) -> None:
        """Start virtlogd and libvirtd (daemonized) unless they already run."""
        for name in DAEMONS:
            if pids_by_comm(name):
                continue
            run([name, "-d"])
            self.started[name] = self._wait_for_pid(name)
        deadline = time.monotonic() + 30
        while subprocess.run([*VIRSH, "uri"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError("libvirtd does not answer on qemu:///system")
            time.sleep(0.2)

    def _wait_for_pid(self, name: str) -> int:
        deadline = time.monotonic() + 10
        while not (pids := pids_by_comm(name)):
            if time.monotonic() > deadline:
                raise BenchError(f"{name} -d did not leave a running {name}")
            time.sleep(0.05)
        return pids[0]

    def daemon_pids(self) -> dict[str, int]:
        return {name: pids[0] for name in MEMORY_DAEMONS if (pids := pids_by_comm(name))}

    def stop_daemons(self) -> None:
        """Stop only the daemons this run started, libvirtd first."""
        for name in reversed(DAEMONS):
            pid = self.started.pop(name, None)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    # --- domains ------------------------------------------------------------------------

    def serial_path(self, name: str) -> Path:
        return self.root / f"{name}.serial"

    def domain_xml(self, name: str) -> str:
        def e(value: object) -> str:
            return escape(str(value), {"'": "&apos;"})

        return f"""<domain type='qemu'>
  <name>{e(name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{e(self.kernel)}</kernel>
    <initrd>{e(self.initrd)}</initrd>
    <cmdline>{e(self.cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='file'><source path='{e(self.serial_path(name))}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <panic model='isa'/>
  </devices>
</domain>
"""

    def definition_file(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.xml"
        path.write_text(self.domain_xml(name))
        self.names.append(name)
        return path

    def define_many(self, names: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        commands = []
        for name in names:
            path = self.root / f"{name}.xml"
            path.write_text(self.domain_xml(name))
            commands.append(f"define {path}")
            self.names.append(name)
        self._batch(commands)

    def _batch(self, commands: list[str], check: bool = True) -> None:
        for i in range(0, len(commands), BATCH):
            script = " ; ".join(commands[i : i + BATCH])
            done = subprocess.run([*VIRSH, script], capture_output=True, text=True, timeout=120)
            if check and done.returncode != 0:
                raise BenchError(f"virsh {commands[i]} ...: {done.stderr.strip()[-500:]}")

    def start_to_ready(self, name: str, ready: bytes, timeout: float = 120) -> dict[str, float]:
        """Seconds from running `virsh start` until ``ready`` is in the serial file, and
        until libvirt forked QEMU and `virsh start` returned (the guest runs from then)."""
        serial = self.serial_path(name)
        serial.unlink(missing_ok=True)
        daemons = list(self.daemon_pids().values())
        cpu0 = cpu_seconds(daemons)
        t0 = now()
        proc = subprocess.Popen(
            [*VIRSH, "start", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        returned: list[float] = []
        waiter = threading.Thread(target=lambda: returned.append(_wait(proc, timeout)))
        waiter.start()
        try:
            seen = wait_for_text(serial, ready, t0 + timeout)
        finally:
            waiter.join()
        if proc.returncode != 0:
            err = proc.stderr.read().decode().strip() if proc.stderr else ""
            raise BenchError(f"virsh start {name}: {err}")
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        forked = process_started(pid)
        return {
            "ready": seen - t0,
            "forked": forked - t0,
            "returned": returned[0] - t0,
            "daemon_cpu": cpu_seconds(daemons) - cpu0,
        }

    def start(self, name: str) -> None:
        run([*VIRSH, "start", name])

    def restart_to_list(self, running: int, timeout: float = 60) -> float:
        """Stop libvirtd (SIGTERM; its domains keep running), start it again, and return
        the seconds from that exec until `virsh list` first succeeds showing ``running``."""
        pids = pids_by_comm("libvirtd")
        if not pids:
            raise BenchError("libvirtd is not running")
        os.kill(pids[0], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pids_by_comm("libvirtd"):
            if time.monotonic() > deadline:
                raise BenchError("libvirtd did not stop within 30 s of SIGTERM")
            time.sleep(0.01)
        t0 = now()
        run(["libvirtd", "-d"])  # forks the daemon and returns
        while now() < t0 + timeout:
            done = subprocess.run([*VIRSH, "list", "--name"], capture_output=True, text=True)
            if done.returncode == 0 and len(done.stdout.split()) >= running:
                elapsed = now() - t0
                if "libvirtd" in self.started:  # ours to stop at the end, under its new pid
                    self.started["libvirtd"] = self._wait_for_pid("libvirtd")
                return elapsed
            time.sleep(0.002)
        raise BenchError(f"restarted libvirtd did not list {running} running domains")

    def destroy(self, name: str) -> None:
        subprocess.run([*VIRSH, "destroy", name], capture_output=True, timeout=120)

    def remove(self, prefix: str) -> None:
        """Destroy and undefine every domain whose name starts with ``prefix``."""
        listing = subprocess.run(
            [*VIRSH, "list", "--all", "--name"], capture_output=True, text=True, timeout=60
        )
        ours = [n for n in listing.stdout.split() if n.startswith(prefix)]
        running = subprocess.run(
            [*VIRSH, "list", "--name"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        self._batch([f"destroy {n}" for n in ours if n in running], check=False)
        self._batch([f"undefine {n}" for n in ours], check=False)
        self.names.clear()

    def versions(self) -> dict[str, str]:
        libvirtd = subprocess.run(["libvirtd", "--version"], capture_output=True, text=True)
        return {"libvirt": libvirtd.stdout.strip().split()[-1] if libvirtd.stdout else "?"}


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for ``proc`` and say when it ended (:func:`now`)."""
    proc.wait(timeout=timeout)
    return now()

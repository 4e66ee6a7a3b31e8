"""Both stacks of ``bench/vs_network.py``, each inside a network namespace of its own.

The namespaces are the run's (``ip netns add``): each stack's bridge, TAPs, dnsmasq and
firewall rules are made there and go away with it; nothing is made in the host's own
namespace and no packet leaves this machine (ARCHITECTURE.md, "Network tests stay on
this machine").

- qumran: a private qumrand (its own socket, state and run folders) exec'd inside its
  namespace; as root it defines its ``default`` NAT network there on its first start.
- libvirt: virtlogd + libvirtd inside their namespace *and* a mount namespace of their own,
  in which /etc/libvirt (a copy), /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
  /var/log/libvirt are folders of the run: another libvirtd on the host (another
  benchmark's) is neither seen nor touched, and the host's libvirt configuration is not
  changed. virsh reaches it through the socket's path (``?socket=``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from vslib.measure import BenchError, now, run

NETWORK = "default"
SUBNET = "192.168.122"  # both stacks' default: libvirt's, and Qumran's first pick
HOST = f"{SUBNET}.1"  # the bridge's address: "the host" as the guests see it
DHCP_START, DHCP_END = f"{SUBNET}.2", f"{SUBNET}.254"
MEMORY_MIB = 256


class Netns:
    """A network namespace of the run's, deleted with whatever still runs in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def processes(self) -> list[int]:
        inode = os.stat(f"/run/netns/{self.name}").st_ino
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                        found.append(int(entry))
        return found

    def delete(self) -> None:
        if not Path(f"/run/netns/{self.name}").exists():
            return
        for _ in range(100):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    cmdline: str


class LinkWatch:
    """``ip monitor link`` in a namespace: when a port of ``bridge`` was first seen up
    (:func:`now`), an event rather than a poll."""

    def __init__(self, ns: Netns, bridge: str) -> None:
        self.bridge = bridge
        self.seen: float | None = None
        self.proc = subprocess.Popen(
            ["ip", "-n", ns.name, "-o", "monitor", "link"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            up = ",UP," in line or ",UP>" in line or "<UP," in line
            if f"master {self.bridge} " in line and up and "LOWER_UP" in line:
                self.seen = now()
                return

    def close(self) -> float | None:
        self.proc.kill()
        self.proc.wait()
        self.thread.join(timeout=2)
        return self.seen


class Stack:
    """What vs_network does with either stack."""

    label = "?"
    ns: Netns
    bridge = "?"

    def net_start_argv(self) -> list[str]:
        raise NotImplementedError

    def net_destroy_argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def define_vm(self, name: str) -> None:
        raise NotImplementedError

    def start_vm(self, name: str) -> tuple[int, Path]:
        """Start ``name``; the hypervisor's pid and the console file to watch."""
        raise NotImplementedError

    def destroy_vm(self, name: str) -> None:
        raise NotImplementedError

    def ensure_network(self) -> None:
        """The network is active (started if it is not)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class QumranNet(Stack):
    label = "qumran"

    def __init__(self, root: Path, bin_dir: Path, guest: Guest, ns: Netns) -> None:
        self.root, self.bin_dir, self.guest, self.ns = root, bin_dir, guest, ns
        self.socket = str(root / "qumrand.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.vms: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "QUMRAN_SOCKET": self.socket}

    @property
    def cli(self) -> str:
        return str(self.bin_dir / "qumran")

    def qumran(self, *args: str, timeout: float = 120) -> str:
        return run([self.cli, *args], env=self.env, timeout=timeout)

    def start_daemon(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = self.ns.argv(
            str(self.bin_dir / "qumrand"), "--socket", self.socket,
            "--state-dir", str(self.root / "state"), "--run-dir", str(self.root / "run"),
            "--driver", "real",
            "--default-network",  # as the system daemon does on its first start
        )  # fmt: skip
        with open(self.root / "qumrand.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"qumrand exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
                break
            time.sleep(0.05)
        else:
            raise BenchError(f"qumrand did not listen in {timeout} s: {self.log_tail()}")
        self.ensure_network()
        info = json.loads(self.qumran("--json", "net-info", NETWORK))
        if info["address"] != f"{HOST}/24":
            raise BenchError(f"qumrand's default network is on {info['address']}, not {HOST}/24")
        self.bridge = info["bridge"]

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "qumrand.log").read_text()[-1500:]
        return ""

    def ensure_network(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            nets = {n["name"]: n for n in json.loads(self.qumran("--json", "net-list"))}
            if NETWORK in nets:
                if not nets[NETWORK]["active"]:
                    self.qumran("net-start", NETWORK)
                return
            time.sleep(0.1)
        raise BenchError(f"qumrand defined no {NETWORK!r} network: {self.log_tail()}")

    def net_start_argv(self) -> list[str]:
        return [self.cli, "net-start", NETWORK]

    def net_destroy_argv(self) -> list[str]:
        return [self.cli, "net-destroy", NETWORK]

    def define_vm(self, name: str) -> None:
        folder = self.root / "definitions"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.yaml"
        g = self.guest
        path.write_text(
            f"name: {name}\nmemory: {MEMORY_MIB}M\nvcpus: 1\nboot:\n"
            f"  kernel: {json.dumps(str(g.kernel))}\n"
            f"  initrd: {json.dumps(str(g.initrd))}\n"
            f"  cmdline: {json.dumps(g.cmdline)}\n"
            f"nics:\n- network: {NETWORK}\n  model: virtio\n"
        )
        self.qumran("define", str(path))
        self.vms.append(name)

    def start_vm(self, name: str) -> tuple[int, Path]:
        pid = int(json.loads(self.qumran("--json", "start", name))["pid"])
        for pidfile in (self.root / "run").glob("vms/*/pid"):
            with contextlib.suppress(OSError, ValueError):
                if int(pidfile.read_text().strip()) == pid:
                    return pid, pidfile.parent / "console.log"
        raise BenchError(f"no run folder of qumrand holds pid {pid}")

    def destroy_vm(self, name: str) -> None:
        subprocess.run([self.cli, "destroy", name], env=self.env, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for name in self.vms:
                self.destroy_vm(name)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def version(self) -> str:
        import qumran

        repo = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        head = done.stdout.strip() or "no git"
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "src"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        changes = ", with uncommitted changes in src/" if dirty else ""
        return f"{qumran.__version__} ({head}{changes})"


# The folders libvirtd keeps its state in, each a folder of the run in its mount namespace.
LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

NETWORK_XML = f"""<network>
  <name>{NETWORK}</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='{HOST}' netmask='255.255.255.0'>
    <dhcp>
      <range start='{DHCP_START}' end='{DHCP_END}'/>
    </dhcp>
  </ip>
</network>
"""


class LibvirtNet(Stack):
    label = "libvirt"
    bridge = "virbr0"

    def __init__(self, root: Path, guest: Guest, ns: Netns) -> None:
        self.root, self.guest, self.ns = root, guest, ns
        self.uri = f"qemu:///system?socket={root / 'run' / 'libvirt-sock'}"
        self.virsh = ["virsh", "-c", self.uri]
        self.pidfiles = {d: root / f"{d}.pid" for d in ("virtlogd", "libvirtd")}
        self.vms: list[str] = []

    def _folders(self) -> None:
        """The run's copies of libvirt's folders: /etc/libvirt's files with no network
        defined or autostarted, and empty state folders owned as the host's are."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for key, real in LIBVIRT_DIRS.items():
            mine = self.root / key
            if key == "etc":
                shutil.copytree(real, mine, symlinks=True)
                networks = mine / "qemu" / "networks"
                shutil.rmtree(networks, ignore_errors=True)
                (networks / "autostart").mkdir(parents=True)
                continue
            mine.mkdir()
            with contextlib.suppress(OSError):
                st = os.stat(real)
                os.chown(mine, st.st_uid, st.st_gid)
                mine.chmod(st.st_mode & 0o7777)
        # Debian ships these owned by libvirt-qemu; libvirtd makes the rest itself.
        for sub in ("qemu", "images", "boot"):
            with contextlib.suppress(OSError):
                st = os.stat(f"/var/lib/libvirt/{sub}")
                (self.root / "lib" / sub).mkdir()
                os.chown(self.root / "lib" / sub, st.st_uid, st.st_gid)
                (self.root / "lib" / sub).chmod(st.st_mode & 0o7777)

    def start_daemons(self, timeout: float = 120) -> None:
        self._folders()
        mounts = "".join(
            f"mount --bind {shlex.quote(str(self.root / key))} {real}\n"
            for key, real in LIBVIRT_DIRS.items()
        )
        script = (
            "set -e\n" + mounts
            + f"virtlogd -d -p {shlex.quote(str(self.pidfiles['virtlogd']))}\n"
            + f"libvirtd -d -p {shlex.quote(str(self.pidfiles['libvirtd']))}\n"
        )  # fmt: skip
        argv = self.ns.argv("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
        run(argv, timeout=60)
        deadline = time.monotonic() + timeout
        while subprocess.run([*self.virsh, "uri"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError(f"libvirtd in {self.ns.name} does not answer on {self.uri}")
            time.sleep(0.2)
        xml = self.root / "network.xml"
        xml.write_text(NETWORK_XML)
        self.virsh_run("net-define", str(xml))
        self.ensure_network()

    def virsh_run(self, *args: str, timeout: float = 120) -> str:
        return run([*self.virsh, *args], timeout=timeout)

    def ensure_network(self) -> None:
        active = self.virsh_run("net-list", "--name").split()
        if NETWORK not in active:
            self.virsh_run("net-start", NETWORK)

    def net_start_argv(self) -> list[str]:
        return [*self.virsh, "net-start", NETWORK]

    def net_destroy_argv(self) -> list[str]:
        return [*self.virsh, "net-destroy", NETWORK]

    def serial_path(self, name: str) -> Path:
        return self.root / f"{name}.serial"

    def domain_xml(self, name: str) -> str:
        def e(value: object) -> str:
            return escape(str(value), {"'": "&apos;"})

        g = self.guest
        return f"""<domain type='qemu'>
  <name>{e(name)}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{e(g.kernel)}</kernel>
    <initrd>{e(g.initrd)}</initrd>
    <cmdline>{e(g.cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <interface type='network'>
      <source network='{NETWORK}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{e(self.serial_path(name))}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <panic model='isa'/>
  </devices>
</domain>
"""

    def define_vm(self, name: str) -> None:
        path = self.root / f"{name}.xml"
        path.write_text(self.domain_xml(name))
        self.virsh_run("define", str(path))
        self.vms.append(name)

    def start_vm(self, name: str) -> tuple[int, Path]:
        serial = self.serial_path(name)
        serial.unlink(missing_ok=True)
        self.virsh_run("start", name)
        pid = int((self.root / "run" / "qemu" / f"{name}.pid").read_text().strip())
        return pid, serial

    def destroy_vm(self, name: str) -> None:
        subprocess.run([*self.virsh, "destroy", name], capture_output=True, timeout=120)

    def stop(self) -> None:
        for name in self.vms:
            self.destroy_vm(name)
        for daemon in ("libvirtd", "virtlogd"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.pidfiles[daemon].read_text().strip())
                if pid in self.ns.processes():  # ours, not a reused pid
                    os.kill(pid, signal.SIGTERM)

    def version(self) -> str:
        out = run(["libvirtd", "--version"]).strip()
        return out.split()[-1] if out else "?"


def qemu_nic_args(pid: int) -> str:
    """The -netdev and -device arguments of a NIC in QEMU's command line (``pid``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    picked = []
    for flag, value in itertools.pairwise(argv):
        if flag == "-netdev" or (flag == "-device" and "virtio-net" in value):
            picked.append(f"{flag} {value}")
    return " ".join(picked)

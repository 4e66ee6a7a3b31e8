"""dnsmasq for one network: DHCP and DNS on its bridge, and nowhere else.

One dnsmasq per network, started from a configuration file qumrand writes (no option on
its command line but the file, so ``ps`` shows which network it serves). It daemonizes
itself: it is nobody's child, outlives qumrand, and drops root for ``nobody`` once its
sockets and files are open. A restarted qumrand re-adopts it from its pid file, after
checking through /proc that the pid is a dnsmasq started with *this* network's
configuration, in qumrand's own network namespace.

Files: the configuration, pid and DHCP hosts file in the network's run directory
(root's; the directory is readable so dnsmasq can re-read the hosts file as nobody on
SIGHUP), the lease file in the state directory (kept across reboots, as libvirt keeps
its leases, so guests get their addresses back).

``--bind-interfaces --interface=BR --except-interface=lo``: dnsmasq listens on the
bridge's address only, so several can run side by side and beside a host resolver.
``dns.forward: false`` adds ``no-resolv`` and no server: then dnsmasq answers names of
the network and sends no query anywhere (tests rely on it).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from qumran.config.network import NetworkSpec

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class DnsmasqFailure(Exception):
    """dnsmasq would not start; the message is dnsmasq's own line."""


@dataclass(frozen=True)
class Files:
    """Where one network's dnsmasq keeps its files."""

    run: Path  # <run>/networks/NAME
    state: Path  # <state>/networks/NAME

    @property
    def conf(self) -> Path:
        return self.run / "dnsmasq.conf"

    @property
    def pid(self) -> Path:
        return self.run / "dnsmasq.pid"

    @property
    def hosts(self) -> Path:
        return self.run / "dhcp-hosts"

    @property
    def leases(self) -> Path:
        return self.state / "leases"


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: IPv4Address
    hostname: str | None
    expires: int  # seconds since the epoch; 0: never
    client_id: str | None


def config(spec: NetworkSpec, bridge: str, files: Files) -> str:
    """dnsmasq's configuration for a nat or isolated network."""
    assert spec.ipv4 is not None
    net = spec.ipv4.address.network
    lines = [
        f"# qumrand: network {spec.name} (generated at each start; edits are lost)",
        f"pid-file={files.pid}",
        "except-interface=lo",
        "bind-interfaces",
        f"interface={bridge}",
        "no-hosts",
        "strict-order",
    ]
    if spec.dns.forward:
        # Plain names and private reverse lookups never leave the host (libvirt's choice).
        lines += ["domain-needed", "bogus-priv"]
    else:
        lines += ["no-resolv", "no-poll"]
    if spec.domain is not None:
        lines += [f"domain={spec.domain}", f"local=/{spec.domain}/", "expand-hosts"]
    dhcp = spec.ipv4.dhcp
    if dhcp is not None:
        size = int(dhcp.end) - int(dhcp.start) + 1
        lines += [
            f"dhcp-range={dhcp.start},{dhcp.end},{net.netmask},{dhcp.lease_time}",
            "dhcp-no-override",
            "dhcp-authoritative",
            f"dhcp-lease-max={size}",
            f"dhcp-leasefile={files.leases}",
            f"dhcp-hostsfile={files.hosts}",
        ]
        if spec.type == "isolated":
            lines.append("dhcp-option=3")  # no router: there is no way out
    else:
        lines.append("no-dhcp-interface=" + bridge)
    return "\n".join(lines) + "\n"


def _binary() -> str:
    found = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise DnsmasqFailure("dnsmasq is not installed (Debian: apt install dnsmasq-base)")
    return found


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Root's file, written whole (a temporary name, then renamed over)."""
    part = path.with_name(f".{path.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(part, path)


def prepare(files: Files, conf: str) -> None:
    """The directories (root's), the configuration and an empty hosts file."""
    files.run.mkdir(parents=True, exist_ok=True, mode=0o755)
    files.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(files.conf, conf)
    if not files.hosts.exists():
        _write(files.hosts, "")


def start(files: Files) -> int:
    """Start dnsmasq with ``files.conf``; returns its pid once it serves (dnsmasq's
    parent exits only after the daemon has bound its sockets, and reports its errors)."""
    with contextlib.suppress(FileNotFoundError):
        files.pid.unlink()
    try:
        done = subprocess.run([_binary(), f"--conf-file={files.conf}"], capture_output=True,
                              text=True, timeout=START_TIMEOUT, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnsmasqFailure(f"cannot run dnsmasq: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise DnsmasqFailure(why[-1] if why else f"dnsmasq exited with {done.returncode}")
    pid = running(files)
    if pid is None:
        raise DnsmasqFailure(f"dnsmasq started but wrote no pid to {files.pid}")
    return pid


def _same_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def running(files: Files) -> int | None:
    """The pid of this network's dnsmasq if it runs: the pid file's process, a live
    dnsmasq whose command line names this configuration, in our network namespace."""
    try:
        pid = int(files.pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    state = stat[stat.rindex(b")") + 2 :].split()[0]
    comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
    if state in (b"Z", b"X") or comm != b"dnsmasq":
        return None
    if f"--conf-file={files.conf}".encode() not in argv or not _same_netns(pid):
        return None
    return pid


def stop(pid: int) -> None:
    """TERM, wait for it to end (a pidfd: it is not our child), KILL if it will not."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], STOP_TIMEOUT)[0]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT)
    finally:
        os.close(pidfd)


def reload_hosts(pid: int) -> None:
    """dnsmasq re-reads its DHCP hosts file on SIGHUP (static entries, part of NICs)."""
    os.kill(pid, signal.SIGHUP)


def leases(path: Path) -> list[Lease]:
    """The IPv4 leases of a dnsmasq lease file (lines: expiry MAC IP hostname client-id;
    ``*`` for none); a missing file is no leases, a line it cannot read is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        try:
            expires, ip = int(parts[0]), IPv4Address(parts[2])
        except ValueError:
            continue  # an IPv6 lease, or a torn line
        name = None if parts[3] == "*" else parts[3]
        client = parts[4] if len(parts) > 4 and parts[4] != "*" else None
        found.append(Lease(parts[1].lower(), ip, name, expires, client))
    return found


def remove_files(files: Files, *, keep_leases: bool = True) -> None:
    for path in (files.conf, files.pid, files.hosts):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        files.run.rmdir()
    if not keep_leases:
        with contextlib.suppress(FileNotFoundError):
            files.leases.unlink()
        with contextlib.suppress(OSError):
            files.state.rmdir()


def wait_gone(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """Whether ``pid`` has ended (or is a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0])
    finally:
        os.close(pidfd)

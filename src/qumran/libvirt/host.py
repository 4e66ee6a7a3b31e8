"""The host as libvirt describes it: version numbers, node info and counters, the
capabilities and domain capabilities XML."""

from __future__ import annotations

import os
import platform
import re
import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from qumran.config.domxml import MACHINE
from qumran.config.spec import MAX_VCPUS
from qumran.libvirt.protocol import remote as r

if TYPE_CHECKING:
    from qumran.daemon.manager import Manager

# The libvirt whose protocol this is (protocol/README.md): clients pick features by it.
LIB_VERSION = 9_000_000


def _version_number(text: str) -> int:
    """"7.2.0" (or "QEMU emulator version 7.2.0 ...") as libvirt's 7002000."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return 0
    major, minor, micro = (int(g or 0) for g in match.groups())
    return major * 1_000_000 + minor * 1_000 + micro


def _qemu_info(manager: Manager) -> tuple[str, str]:
    driver = manager.drivers.get("qemu")
    if driver is None:
        return "", "qemu"
    info = driver.host_info()
    return info.version, info.accelerator


def hypervisor_version(manager: Manager) -> int:
    return _version_number(_qemu_info(manager)[0])


def accelerator(manager: Manager) -> str:
    return _qemu_info(manager)[1]


def _mhz() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]))
    except (OSError, ValueError):
        pass
    return 0


def node_info() -> r.remote_node_get_info_ret:
    # model is rpcgen's char[32]: one int per character, NUL-padded.
    model = platform.machine().encode()[:31]
    cpus = os.cpu_count() or 1
    return r.remote_node_get_info_ret(
        model=list(model.ljust(32, b"\0")),
        memory=meminfo_kib().get("MemTotal", 0),
        cpus=cpus,
        mhz=_mhz(),
        nodes=1,
        sockets=1,
        cores=cpus,
        threads=1,
    )


def _host_uuid() -> str:
    try:
        with open("/etc/machine-id") as f:
            return str(uuidlib.UUID(f.read().strip()))
    except (OSError, ValueError):
        return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, socket.gethostname()))


def capabilities_xml(manager: Manager) -> str:
    """The host and the guests it runs: x86_64 hvm under QEMU (TCG), and KVM where the
    QEMU driver found a usable one."""
    root = ET.Element("capabilities")
    host = ET.SubElement(root, "host")
    ET.SubElement(host, "uuid").text = _host_uuid()
    cpu = ET.SubElement(host, "cpu")
    ET.SubElement(cpu, "arch").text = platform.machine()
    ET.SubElement(cpu, "topology", sockets="1", dies="1", cores=str(os.cpu_count() or 1),
                  threads="1")  # fmt: skip
    ET.SubElement(host, "power_management")
    guest = ET.SubElement(root, "guest")
    ET.SubElement(guest, "os_type").text = "hvm"
    arch = ET.SubElement(guest, "arch", name="x86_64")
    ET.SubElement(arch, "wordsize").text = "64"
    ET.SubElement(arch, "machine").text = MACHINE
    ET.SubElement(arch, "domain", type="qemu")
    if accelerator(manager) == "kvm":
        ET.SubElement(arch, "domain", type="kvm")
    features = ET.SubElement(guest, "features")
    ET.SubElement(features, "acpi", default="on", toggle="no")
    ET.SubElement(features, "apic", default="on", toggle="no")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- domain capabilities ---------------------------------------------------------------

def _emulator(manager: Manager) -> str:
    driver = manager.drivers.get("qemu")
    return str(getattr(driver, "binary", "") or "/usr/bin/qemu-system-x86_64")


def domain_capabilities_xml(
    manager: Manager, emulator: str | None, arch: str | None, machine: str | None,
    virttype: str | None,
) -> str:  # fmt: skip
    """``<domainCapabilities>`` (libvirt's formatdomaincaps): what a domain XML may ask
    of Qumran's QEMU driver. Only what Qumran does is ``supported='yes'``, so tools that
    build XML from it (virt-install, virt-manager) offer nothing it would refuse.

    Raises ValueError naming the argument Qumran cannot serve (as libvirtd refuses an
    emulator, architecture or virtualization type it has none for)."""
    accel = accelerator(manager)
    path = _emulator(manager)
    if arch not in (None, "x86_64"):
        raise ValueError(f"unable to find any emulator to serve '{arch}' architecture "
                         "(Qumran runs x86_64 guests)")  # fmt: skip
    if emulator not in (None, path):
        raise ValueError(f"emulator '{emulator}' is not Qumran's; its QEMU is {path}")
    if virttype not in (None, "qemu", "kvm") or (virttype == "kvm" and accel != "kvm"):
        runs = "kvm and qemu" if accel == "kvm" else "qemu (TCG: no usable KVM)"
        raise ValueError(f"virttype '{virttype}' is not supported here: Qumran's QEMU runs {runs}")
    # 'pc': what Qumran's dumpxml said before it said q35 (domxml still takes it on define).
    if machine not in (None, MACHINE, "pc"):
        raise ValueError(f"machine '{machine}' is not supported: Qumran's QEMU runs {MACHINE}")
    domain = virttype or ("kvm" if accel == "kvm" else "qemu")
    root = ET.Element("domainCapabilities")
    ET.SubElement(root, "path").text = path
    ET.SubElement(root, "domain").text = domain
    ET.SubElement(root, "machine").text = MACHINE
    ET.SubElement(root, "arch").text = "x86_64"
    ET.SubElement(root, "vcpu", max=str(MAX_VCPUS))
    ET.SubElement(root, "iothreads", supported="no")
    os_el = ET.SubElement(root, "os", supported="yes")
    ET.SubElement(os_el, "enum", name="firmware")  # the default (BIOS) only
    ET.SubElement(os_el, "loader", supported="no")
    cpu = ET.SubElement(root, "cpu")
    # -cpu host under KVM, -cpu max under TCG (drivers/qemu/cmdline.py): which mode is
    # which libvirt mode; no others.
    passthrough = ET.SubElement(cpu, "mode", name="host-passthrough",
                                supported="yes" if domain == "kvm" else "no")  # fmt: skip
    if domain == "kvm":
        _enum(passthrough, "hostPassthroughMigratable", ["off"])
    maximum = ET.SubElement(cpu, "mode", name="maximum", supported="yes")
    _enum(maximum, "maximumMigratable", ["off"])
    ET.SubElement(cpu, "mode", name="host-model", supported="no")
    ET.SubElement(cpu, "mode", name="custom", supported="no")
    ET.SubElement(root, "memoryBacking", supported="no")
    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", supported="yes")
    _enum(disk, "diskDevice", ["disk"])
    _enum(disk, "bus", ["virtio"])
    _enum(disk, "model", [])
    graphics = ET.SubElement(devices, "graphics", supported="yes")
    _enum(graphics, "type", ["vnc"])
    for unsupported in ("video", "hostdev", "rng", "filesystem", "tpm", "redirdev",
                        "channel", "crypto"):  # fmt: skip
        ET.SubElement(devices, unsupported, supported="no")
    features = ET.SubElement(root, "features")
    for unsupported in ("gic", "vmcoreinfo", "genid", "backingStoreInput", "backup",
                        "async-teardown", "sev", "sgx"):  # fmt: skip
        ET.SubElement(features, unsupported, supported="no")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _enum(parent: ET.Element, name: str, values: list[str]) -> None:
    el = ET.SubElement(parent, "enum", name=name)
    for value in values:
        ET.SubElement(el, "value").text = value


# --- the node's counters ---------------------------------------------------------------


def meminfo_kib() -> dict[str, int]:
    """/proc/meminfo, in KiB (what it says), by name."""
    found: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                found[name] = int(parts[0])
    return found


def cpu_times_ns(cpu: int) -> dict[str, int]:
    """/proc/stat's times of one CPU (-1: all), in nanoseconds, as libvirt names them
    (kernel, user, idle, iowait)."""
    label = "cpu" if cpu < 0 else f"cpu{cpu}"
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == label:
                user, nice, system, idle, iowait = (int(x) for x in fields[1:6])
                return {"kernel": system * tick_ns, "user": (user + nice) * tick_ns,
                        "idle": idle * tick_ns, "iowait": iowait * tick_ns}  # fmt: skip
    raise ValueError(f"no CPU {cpu} on this host (it has {os.cpu_count()})")


def online_cpus() -> set[int]:
    """The host's online CPUs (/sys/devices/system/cpu/online: "0-3,6")."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return set(range(os.cpu_count() or 1))
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found

"""The host as libvirt describes it: version numbers, node info, the capabilities XML."""

from __future__ import annotations

import os
import platform
import re
import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

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


def _meminfo_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


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
        memory=_meminfo_kib(),
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
    ET.SubElement(arch, "machine").text = "pc"
    ET.SubElement(arch, "domain", type="qemu")
    if accelerator(manager) == "kvm":
        ET.SubElement(arch, "domain", type="kvm")
    features = ET.SubElement(guest, "features")
    ET.SubElement(features, "acpi", default="on", toggle="no")
    ET.SubElement(features, "apic", default="on", toggle="no")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"

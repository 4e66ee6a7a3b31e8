"""A Qumran definition as libvirt's ``<domain>`` (dumpxml, and the libvirt protocol's
GetXMLDesc). What libvirt's XML has no place for goes in ``<metadata>`` under Qumran's
namespace, where :mod:`qumran.config.domxml.read` finds it again."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from qumran.config.domxml.names import MACHINE, NS, Q
from qumran.config.spec import DiskBoot, KernelBoot, VmSpec


def to_xml(name: str, uuid: str, spec: VmSpec, *, dom_id: int | None = None,
           accelerator: str = "qemu") -> str:  # fmt: skip
    """``<domain>`` for one VM (``dom_id``: its process id while it runs)."""
    root = ET.Element("domain", {"type": "kvm" if accelerator == "kvm" else "qemu"})
    if dom_id is not None:
        root.set("id", str(dom_id))
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "uuid").text = uuid
    _metadata(root, spec)
    kib = str(spec.memory * 1024)
    ET.SubElement(root, "memory", unit="KiB").text = kib
    ET.SubElement(root, "currentMemory", unit="KiB").text = kib
    ET.SubElement(root, "vcpu", placement="static").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine=MACHINE).text = "hvm"
    if isinstance(spec.boot, KernelBoot):
        ET.SubElement(os_el, "kernel").text = str(spec.boot.kernel)
        if spec.boot.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(spec.boot.initrd)
        if spec.boot.cmdline:
            ET.SubElement(os_el, "cmdline").text = spec.boot.cmdline
    # A guest that powers off ends its process; a reboot restarts in the same one; a
    # crashed guest stays as it is until destroyed (libvirt's "preserve").
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "preserve"
    devices = ET.SubElement(root, "devices")
    boot_disk = spec.boot.disk if isinstance(spec.boot, DiskBoot) else None
    for index, disk in enumerate(spec.disks):
        kind = "file" if disk.path is not None else "volume"
        el = ET.SubElement(devices, "disk", type=kind, device="disk")
        driver = {"name": "qemu"}
        if disk.format is not None:
            driver["type"] = disk.format
        ET.SubElement(el, "driver", driver)
        if disk.path is not None:
            ET.SubElement(el, "source", file=str(disk.path))
        else:
            ET.SubElement(el, "source", pool=disk.pool, volume=str(disk.volume))
        ET.SubElement(el, "target", dev=vd(index), bus="virtio")
        if disk.readonly:
            ET.SubElement(el, "readonly")
        if index == boot_disk:
            ET.SubElement(el, "boot", order="1")
    for nic in spec.nics:
        if nic.network is not None:
            el = ET.SubElement(devices, "interface", type="network")
            ET.SubElement(el, "source", network=nic.network)
        else:
            el = ET.SubElement(devices, "interface", type="user")
        if nic.mac:
            ET.SubElement(el, "mac", address=nic.mac)
        ET.SubElement(el, "model", type=nic.model)
    if spec.serial:
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
    if spec.graphics:
        ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _metadata(root: ET.Element, spec: VmSpec) -> None:
    extra: list[ET.Element] = []
    if spec.hypervisor != "qemu":
        el = ET.Element(Q + "hypervisor")
        el.text = spec.hypervisor
        extra.append(el)
    for index, nic in enumerate(spec.nics):
        for rule in nic.forward:
            el = ET.Element(Q + "forward", nic=str(index))
            el.text = rule
            extra.append(el)
    if spec.cloud_init is not None:
        el = ET.Element(Q + "cloud-init")
        el.text = json.dumps(spec.cloud_init.model_dump(mode="json", exclude_defaults=True))
        extra.append(el)
    if extra:
        ET.register_namespace("qumran", NS)
        vm = ET.SubElement(ET.SubElement(root, "metadata"), Q + "vm")
        vm.extend(extra)


def vd(index: int) -> str:
    """The guest's name for the VM's ``index``-th disk."""
    return "vd" + "abcdefghijklmnopqrstuvwxyz"[index]

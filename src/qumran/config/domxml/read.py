"""libvirt's ``<domain>`` as a Qumran definition (``qumran define --xml``, the libvirt
protocol's DefineXML).

Only what a Qumran VM can be is read; any element, attribute value or device Qumran does
not have is refused with its path (``devices/disk[2]/target@bus``: ...), never dropped.
The XML is parsed with the standard library; a document with a DOCTYPE is refused
outright (entities are how a small document becomes a huge one, and a domain has none).
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

from qumran.config import xmlread
from qumran.config.domxml.names import MACHINE, MAX_XML, QEMU_BINARY_NAMES, Q
from qumran.config.xmlread import XmlInvalid, XmlUnsupported

_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 10**6, "m": 1 << 20,
          "mib": 1 << 20, "gb": 10**9, "g": 1 << 30, "gib": 1 << 30, "tb": 10**12,
          "t": 1 << 40, "tib": 1 << 40}  # fmt: skip


class _Reader:
    """Walks the document, marking what it has read; whatever is left is refused."""

    def __init__(self, root: ET.Element) -> None:
        self.root = root

    def children(self, el: ET.Element, path: str, allowed: set[str]) -> dict[str, list[ET.Element]]:
        found: dict[str, list[ET.Element]] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue  # a comment or processing instruction
            if child.tag not in allowed:
                where = f"{path}/{_tag(child.tag)}"
                raise XmlUnsupported(
                    f"{where}: Qumran has no such setting; remove the element"
                    + (_hint(where) or " (docs/libvirt.md lists what a domain may hold)")
                )
            found.setdefault(child.tag, []).append(child)
        return found


# What virt-install (and virt-manager) add by default that a Qumran VM does not have, and
# the virt-install option that leaves it out: a refusal names it, so the fix is one flag.
# Keyed by the refused element's path (its last steps), most specific first.
VIRT_INSTALL_HINTS = {
    "devices/controller@type=usb": "--controller usb,model=none",
    "devices/controller@model=pcie-root-port": "--controller pci,model=pcie-root",
    "devices/input": "--input none",
    "devices/sound": "--sound none",
    "devices/channel": "--channel none",
    "devices/rng": "--rng none",
    "devices/memballoon": "--memballoon none",
    "devices/redirdev": "--redirdev none",
    "devices/video": "--video vga with --graphics vnc, --video none without",
    "devices/graphics": "--graphics vnc (or --graphics none)",
    "devices/disk@device": "--disk ...,device=disk",
    "devices/disk/target@bus": "--disk ...,bus=virtio",
    "devices/interface/model@type": "--network ...,model=virtio",
    "devices/interface@type": "--network user (or network=NAME)",
    "clock/timer": "--clock offset=utc,hpet_present=yes",
    "domain/pm": "--pm suspend_to_mem.enabled=on,suspend_to_disk.enabled=on",
    "metadata/{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo":
        "--osinfo detect=on,require=off (which writes none when it detects nothing) "
        "or --osinfo generic",
}  # fmt: skip


def _hint(where: str) -> str:
    """The virt-install option that leaves out what ``where`` names, as a sentence end."""
    bare = re.sub(r"\[\d+\]|'", "", where)
    for key, option in VIRT_INSTALL_HINTS.items():
        if key in bare:
            return f" (virt-install: {option})"
    return ""


def _refuse(where: str, why: str) -> XmlUnsupported:
    return XmlUnsupported(f"{where}: {why}{_hint(where)}")


def _tag(tag: str) -> str:
    return tag.replace(Q, "qumran:")


def _attrs(el: ET.Element, path: str, allowed: dict[str, set[str] | None]) -> dict[str, str]:
    """xmlread.attrs, its refusal ending with the virt-install option that avoids it."""
    try:
        return xmlread.attrs(el, path, allowed)
    except XmlUnsupported as exc:
        message = str(exc)
        raise XmlUnsupported(message + _hint(message.split(":", 1)[0])) from None


def _one(found: dict[str, list[ET.Element]], tag: str, path: str) -> ET.Element | None:
    items = found.get(tag, [])
    if len(items) > 1:
        raise XmlUnsupported(f"{path}/{tag}: given {len(items)} times; Qumran takes one")
    return items[0] if items else None


def _text(el: ET.Element, path: str) -> str:
    if len(el):
        raise XmlUnsupported(f"{path}/{_tag(el[0].tag)}: Qumran has no such setting")
    return (el.text or "").strip()


def parse(text: str) -> tuple[dict[str, Any], str | None]:
    """A Qumran definition (to validate as any other) and the ``<uuid>``, if given."""
    root = xmlread.root(text, "domain", MAX_XML)
    _attrs(root, "domain", {"type": {"qemu", "kvm"}, "id": None})
    top = _Reader(root).children(root, "domain", {
        "name", "uuid", "metadata", "memory", "currentMemory", "vcpu", "os", "features",
        "cpu", "clock", "pm", "on_poweroff", "on_reboot", "on_crash", "devices"})  # fmt: skip
    doc: dict[str, Any] = {}
    name = _one(top, "name", "domain")
    if name is None:
        raise XmlInvalid("domain/name: missing; give the VM a name")
    doc["name"] = _text(name, "domain/name")
    uuid = None
    if (el := _one(top, "uuid", "domain")) is not None:
        try:
            uuid = str(uuidlib.UUID(_text(el, "domain/uuid")))
        except ValueError:
            raise XmlInvalid("domain/uuid: not a UUID such as "
                             "4dea22b3-1d52-d8f3-2516-782e98ab3fa0") from None  # fmt: skip
    _memory(top, doc)
    _vcpus(top, doc)
    _actions(top)
    _features(top)
    _cpu(top, root.get("type", "qemu"))
    _pm(top)
    boot_disk = _devices(top, doc)
    _os(top, doc, boot_disk)
    _read_metadata(top, doc)
    return doc, uuid


def _size_kib(el: ET.Element, path: str) -> int:
    unit = _attrs(el, path, {"unit": None}).get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise XmlInvalid(f"{path}@unit={unit!r}: not a unit (KiB, MiB, GiB...)")
    try:
        value = int(_text(el, path))
    except ValueError:
        raise XmlInvalid(f"{path}: not a whole number") from None
    return value * _UNITS[unit] // 1024


def _memory(top: dict[str, list[ET.Element]], doc: dict[str, Any]) -> None:
    memory = _one(top, "memory", "domain")
    if memory is None:
        raise XmlInvalid("domain/memory: missing; give the VM's memory")
    kib = _size_kib(memory, "domain/memory")
    if kib % 1024:
        raise XmlUnsupported(f"domain/memory: {kib} KiB is not whole MiB; Qumran counts in MiB")
    doc["memory"] = kib // 1024
    current = _one(top, "currentMemory", "domain")
    if current is not None and _size_kib(current, "domain/currentMemory") != kib:
        raise XmlUnsupported(
            "domain/currentMemory: less than memory needs a balloon, which Qumran has not; "
            "make it equal to memory or remove it"
        )


def _vcpus(top: dict[str, list[ET.Element]], doc: dict[str, Any]) -> None:
    vcpu = _one(top, "vcpu", "domain")
    if vcpu is None:
        return
    attrs = _attrs(vcpu, "domain/vcpu", {"placement": {"static"}, "current": None})
    try:
        doc["vcpus"] = int(_text(vcpu, "domain/vcpu"))
    except ValueError:
        raise XmlInvalid("domain/vcpu: not a whole number") from None
    if "current" in attrs and attrs["current"] != str(doc["vcpus"]):
        raise XmlUnsupported("domain/vcpu@current: hot-plugged vCPUs are not in Qumran; remove it")


# The lifecycle actions Qumran has: what its VMs do, and nothing else.
_ACTIONS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "preserve"}


def _actions(top: dict[str, list[ET.Element]]) -> None:
    for tag, only in _ACTIONS.items():
        el = _one(top, tag, "domain")
        if el is not None and (value := _text(el, f"domain/{tag}")) != only:
            raise XmlUnsupported(f"domain/{tag}: {value!r} is not what Qumran does; it does "
                                 f"{only!r} (write that, or remove the element)")  # fmt: skip


def _features(top: dict[str, list[ET.Element]]) -> None:
    # ACPI and the APIC are always there in a Qumran VM (and PAE on x86_64), and so is
    # VMware's I/O port (QEMU's q35 has vmport on unless told otherwise): naming them
    # changes nothing; any other feature is one Qumran does not have.
    for features in top.get("features", []):
        found = _Reader(features).children(features, "domain/features",
                                           {"acpi", "apic", "pae", "vmport"})  # fmt: skip
        for vmport in found.get("vmport", []):
            _attrs(vmport, "domain/features/vmport", {"state": {"on"}})
    for clock in top.get("clock", []):
        _attrs(clock, "domain/clock", {"offset": {"utc"}})
        found = _Reader(clock).children(clock, "domain/clock", {"timer"})
        for index, timer in enumerate(found.get("timer", [])):
            _timer(timer, f"domain/clock/timer[{index + 1}]")


# The timers QEMU's q35 machine has under Qumran's command line, as libvirt names their
# settings: an RTC and a PIT whose missed ticks are delivered late ("delay": QEMU's
# default, no driftfix), an HPET (q35 has one unless hpet=off), and under KVM kvmclock.
_TIMERS: dict[str, dict[str, set[str] | None]] = {
    "rtc": {"present": {"yes"}, "tickpolicy": {"delay"}},
    "pit": {"present": {"yes"}, "tickpolicy": {"delay"}},
    "hpet": {"present": {"yes"}},
    "kvmclock": {"present": {"yes"}},
}


def _timer(timer: ET.Element, path: str) -> None:
    name = timer.get("name", "")
    if name not in _TIMERS:
        raise _refuse(f"{path}@name={name!r}", "Qumran's VMs have no such timer to set; "
                      "they have rtc, pit, hpet and (under KVM) kvmclock")  # fmt: skip
    _attrs(timer, path, {"name": None, **_TIMERS[name]})
    _Reader(timer).children(timer, path, set())


def _cpu(top: dict[str, list[ET.Element]], domain_type: str) -> None:
    # The CPU QEMU gives a Qumran VM: `-cpu max` under TCG (libvirt's "maximum"), and
    # `-cpu host` under KVM ("host-passthrough"); QEMU's CPU models are not offered.
    cpu = _one(top, "cpu", "domain")
    if cpu is None:
        return
    mode = "host-passthrough" if domain_type == "kvm" else "maximum"
    _attrs(cpu, "domain/cpu", {"mode": {mode}, "check": {"none"},
                               "migratable": {"on"}})  # fmt: skip
    if "mode" not in cpu.attrib:
        raise _refuse("domain/cpu", f"give mode='{mode}' (the CPU a {domain_type} domain has "
                      "under Qumran) or remove the element")  # fmt: skip
    _Reader(cpu).children(cpu, "domain/cpu", set())


def _pm(top: dict[str, list[ET.Element]]) -> None:
    # QEMU's q35 offers the guest S3 and S4 (ICH9-LPC's disable_s3/disable_s4 are off under
    # Qumran's command line), so only enabled='yes' describes a Qumran VM.
    for pm in top.get("pm", []):
        found = _Reader(pm).children(pm, "domain/pm", {"suspend-to-mem", "suspend-to-disk"})
        for tag, items in found.items():
            for el in items:
                if el.get("enabled") == "no":
                    raise _refuse("domain/pm", f"{tag} enabled='no': a Qumran VM can "
                                  "suspend to memory and disk; remove <pm> or say "
                                  "enabled='yes'")  # fmt: skip
                _attrs(el, f"domain/pm/{tag}", {"enabled": {"yes"}})


def _machine(machine: str | None) -> None:
    """Refuse a machine type other than the one Qumran runs. 'pc' is taken too: it is what
    Qumran's own dumpxml wrote before it said q35, and XML kept from then must define."""
    if machine is None or machine in (MACHINE, "pc") or machine.startswith("pc-q35-"):
        return
    raise XmlUnsupported(
        f"domain/os/type@machine={machine!r}: Qumran's VMs are {MACHINE} machines; "
        f"give machine='{MACHINE}' or leave it out"
    )


def _os(top: dict[str, list[ET.Element]], doc: dict[str, Any], boot_disk: int | None) -> None:
    os_el = _one(top, "os", "domain")
    if os_el is None:
        raise XmlInvalid("domain/os: missing; give a kernel, or a disk to boot from")
    found = _Reader(os_el).children(os_el, "domain/os",
                                    {"type", "kernel", "initrd", "cmdline", "boot"})  # fmt: skip
    if (typ := _one(found, "type", "domain/os")) is not None:
        found_attrs = _attrs(typ, "domain/os/type", {"arch": {"x86_64"}, "machine": None})
        _machine(found_attrs.get("machine"))
        if _text(typ, "domain/os/type") != "hvm":
            raise XmlUnsupported("domain/os/type: Qumran runs hvm guests only")
    kernel = _one(found, "kernel", "domain/os")
    for boot in found.get("boot", []):
        _attrs(boot, "domain/os/boot", {"dev": {"hd"}})
        boot_disk = 0 if boot_disk is None else boot_disk
    if kernel is not None:
        if boot_disk is not None:
            raise XmlUnsupported("domain/os: both a kernel and a boot disk; give one of them")
        spec: dict[str, Any] = {"kernel": _text(kernel, "domain/os/kernel")}
        if (initrd := _one(found, "initrd", "domain/os")) is not None:
            spec["initrd"] = _text(initrd, "domain/os/initrd")
        if (cmdline := _one(found, "cmdline", "domain/os")) is not None:
            spec["cmdline"] = cmdline.text or ""
        doc["boot"] = spec
        return
    for tag in ("initrd", "cmdline"):
        if tag in found:
            raise XmlInvalid(f"domain/os/{tag}: given without a kernel")
    doc["boot"] = {"disk": 0 if boot_disk is None else boot_disk}


def _devices(top: dict[str, list[ET.Element]], doc: dict[str, Any]) -> int | None:
    devices = _one(top, "devices", "domain")
    if devices is None:
        return None
    found = _Reader(devices).children(devices, "domain/devices", {
        "emulator", "disk", "interface", "serial", "console", "graphics", "controller",
        "input", "video", "memballoon"})  # fmt: skip
    for emulator in found.get("emulator", []):
        if _text(emulator, "domain/devices/emulator").rsplit("/", 1)[-1] not in QEMU_BINARY_NAMES:
            raise XmlUnsupported("domain/devices/emulator: Qumran chooses its own QEMU; "
                                 "remove the element")  # fmt: skip
    boot_disk = None
    disks = []
    for index, disk in enumerate(found.get("disk", [])):
        dev, parsed, boots = _disk(disk, f"domain/devices/disk[{index + 1}]")
        disks.append((dev, parsed))
        if boots:
            boot_disk = index
    order = sorted(range(len(disks)), key=lambda i: disks[i][0])
    if boot_disk is not None:
        boot_disk = order.index(boot_disk)
    if disks:
        doc["disks"] = [disks[i][1] for i in order]
    nics = [_interface(el, f"domain/devices/interface[{i + 1}]")
            for i, el in enumerate(found.get("interface", []))]  # fmt: skip
    if nics:
        doc["nics"] = nics
    doc["serial"] = _serial(found)
    doc["graphics"] = False
    for index, graphics in enumerate(found.get("graphics", [])):
        path = f"domain/devices/graphics[{index + 1}]"
        if "listen" in graphics.attrib:
            raise XmlUnsupported(f"{path}@listen: {_NO_LISTEN}")
        _attrs(graphics, path, {"type": {"vnc"}, "port": {"-1"}, "autoport": {"yes"}})
        listens = _Reader(graphics).children(graphics, path, {"listen"}).get("listen", [])
        for number, listen in enumerate(listens):
            where = f"{path}/listen[{number + 1}]"
            if listen.get("type") != "none" or len(listen.attrib) > 1:
                raise XmlUnsupported(f"{where}: {_NO_LISTEN}")
            _Reader(listen).children(listen, where, set())
        doc["graphics"] = True
    _builtin_devices(found, doc["graphics"])
    return boot_disk


_NO_LISTEN = (
    "Qumran's VNC listens on no address or socket: each viewer gets its own connection "
    "through qumrand (virt-viewer --attach, virt-manager, the web manager); remove it, or "
    "give <listen type='none'/>"
)


def _builtin_devices(found: dict[str, list[ET.Element]], graphics: bool) -> None:
    """Devices that describe what QEMU's q35 machine under Qumran's command line has
    anyway (so naming them changes nothing), or say it has none of a kind: anything
    else of these kinds is a device Qumran does not have, refused naming it."""
    for index, el in enumerate(found.get("controller", [])):
        _controller(el, f"domain/devices/controller[{index + 1}]")
    for index, el in enumerate(found.get("input", [])):
        # q35's i8042 always has a PS/2 keyboard and mouse; there is no USB for a tablet.
        path = f"domain/devices/input[{index + 1}]"
        _attrs(el, path, {"type": {"mouse", "keyboard"}, "bus": {"ps2"}})
        _Reader(el).children(el, path, set())
    for index, el in enumerate(found.get("video", [])):
        _video(el, f"domain/devices/video[{index + 1}]", graphics)
    for el in found.get("memballoon", []):
        # No balloon device: model='none' says so, as libvirt writes it.
        _attrs(el, "domain/devices/memballoon", {"model": {"none"}})
        _Reader(el).children(el, "domain/devices/memballoon", set())


# libvirt's controllers that q35 under Qumran has: its PCIe root bus (every device sits
# on it: Qumran adds no root ports, so no hot-plug slots), the ICH9 AHCI (SATA) controller
# built into q35, and the ICH9 LPC's ISA bus; and model='none' USB, which says "no USB".
_CONTROLLERS: dict[str, set[str]] = {"pci": {"pcie-root"}, "sata": {"ich9-ahci"},
                                     "isa": set(), "usb": {"none"}}  # fmt: skip


def _controller(el: ET.Element, path: str) -> None:
    kind = el.get("type", "")
    model = el.get("model")
    if kind not in _CONTROLLERS:
        raise _refuse(f"{path}@type={kind!r}", "Qumran's VMs have no such controller")
    if kind == "usb" and model != "none":
        raise _refuse(f"{path}@type='usb'", "Qumran's VMs have no USB; say model='none' "
                      "or remove the controller")  # fmt: skip
    if kind == "pci" and model != "pcie-root":
        raise _refuse(f"{path}@model={model!r}", "a Qumran VM's devices sit on its PCIe root "
                      "bus; it has no root ports or bridges (no hot-plug slots)")  # fmt: skip
    _attrs(el, path, {"type": None, "index": {"0"}, "model": _CONTROLLERS[kind] or None})
    _Reader(el).children(el, path, set())


def _video(el: ET.Element, path: str, graphics: bool) -> None:
    # With graphics, QEMU's standard VGA (-device VGA, 16 MiB of video memory, one head);
    # without, none.
    found = _Reader(el).children(el, path, {"model"})
    model = _one(found, "model", path)
    want = "vga" if graphics else "none"
    if model is None or (kind := model.get("type", "")) != want:
        shown = "" if model is None else f"@type={kind!r}"
        having = "with" if graphics else "without"
        raise _refuse(f"{path}/model{shown}",
                      f"a Qumran VM {having} graphics has video type='{want}'")  # fmt: skip
    allowed: dict[str, set[str] | None] = {"type": None}
    if graphics:
        allowed |= {"vram": {"16384"}, "heads": {"1"}, "primary": {"yes"}}
    _attrs(model, path + "/model", allowed)
    _Reader(model).children(model, path + "/model", set())


def _disk(el: ET.Element, path: str) -> tuple[str, dict[str, Any], bool]:
    attrs = _attrs(el, path, {"type": {"file", "volume"}, "device": {"disk"}})
    found = _Reader(el).children(el, path, {"driver", "source", "target", "readonly", "boot"})
    disk: dict[str, Any] = {}
    if (driver := _one(found, "driver", path)) is not None:
        d = _attrs(driver, path + "/driver", {"name": {"qemu"}, "type": {"raw", "qcow2"}})
        if "type" in d:
            disk["format"] = d["type"]
    source = _one(found, "source", path)
    if source is None:
        raise XmlInvalid(f"{path}/source: missing; give the disk's file or volume")
    if attrs.get("type", "file") == "file":
        disk["path"] = _attrs(source, path + "/source", {"file": None}).get("file")
    else:
        src = _attrs(source, path + "/source", {"pool": None, "volume": None})
        disk["volume"] = src.get("volume")
        disk["pool"] = src.get("pool", "default")
    target = _one(found, "target", path)
    if target is None:
        raise XmlInvalid(f"{path}/target: missing; give dev='vda' bus='virtio'")
    t = _attrs(target, path + "/target", {"dev": None, "bus": {"virtio"}})
    if "readonly" in found:
        disk["readonly"] = True
    boots = False
    for boot in found.get("boot", []):
        _attrs(boot, path + "/boot", {"order": {"1"}})
        boots = True
    return t.get("dev", ""), disk, boots


def _interface(el: ET.Element, path: str) -> dict[str, Any]:
    kind = el.get("type")
    _attrs(el, path, {"type": {"user", "network"}})
    found = _Reader(el).children(el, path, {"mac", "model", "source"})
    nic: dict[str, Any] = {"type": "user"}
    source = _one(found, "source", path)
    if kind == "network":
        if source is None:
            raise XmlInvalid(f"{path}/source: an interface of type='network' names its network")
        network = _attrs(source, path + "/source", {"network": None}).get("network")
        if not network:
            raise XmlInvalid(f"{path}/source@network: missing; name the network")
        nic = {"network": network}
    elif source is not None:
        raise XmlUnsupported(f"{path}/source: a user-mode interface has no source; remove it")
    if (mac := _one(found, "mac", path)) is not None:
        nic["mac"] = _attrs(mac, path + "/mac", {"address": None}).get("address")
    if (model := _one(found, "model", path)) is not None:
        _attrs(model, path + "/model", {"type": {"virtio"}})
    return nic


def _serial(found: dict[str, list[ET.Element]]) -> bool:
    # One 16550 on COM1, reached as the console: <serial> and/or its <console> alias.
    seen = False
    for tag in ("serial", "console"):
        items = found.get(tag, [])
        if len(items) > 1:
            raise XmlUnsupported(f"domain/devices/{tag}: Qumran VMs have one serial port")
        for el in items:
            path = f"domain/devices/{tag}"
            _attrs(el, path, {"type": {"pty"}})
            inner = _Reader(el).children(el, path, {"target"})
            for target in inner.get("target", []):
                _attrs(target, path + "/target", {"port": {"0"}, "type": {"serial"}})
            seen = True
    return seen


def _read_metadata(top: dict[str, list[ET.Element]], doc: dict[str, Any]) -> None:
    for metadata in top.get("metadata", []):
        found = _Reader(metadata).children(metadata, "domain/metadata", {Q + "vm"})
        for vm in found.get(Q + "vm", []):
            path = "domain/metadata/qumran:vm"
            inner = _Reader(vm).children(vm, path, {Q + "hypervisor", Q + "forward",
                                                    Q + "cloud-init"})  # fmt: skip
            if (hyp := _one(inner, Q + "hypervisor", path)) is not None:
                doc["hypervisor"] = _text(hyp, path + "/qumran:hypervisor")
            for forward in inner.get(Q + "forward", []):
                nic = _attrs(forward, path + "/qumran:forward", {"nic": None}).get("nic", "0")
                nics = doc.get("nics", [])
                if not nic.isdigit() or int(nic) >= len(nics):
                    raise XmlInvalid(f"{path}/qumran:forward@nic={nic!r}: no such interface")
                nics[int(nic)].setdefault("forward", []).append(forward.text or "")
            if (ci := _one(inner, Q + "cloud-init", path)) is not None:
                try:
                    doc["cloud_init"] = json.loads(ci.text or "")
                except (ValueError, RecursionError):
                    raise XmlInvalid(f"{path}/qumran:cloud-init: not JSON") from None

"""libvirt's storage pool and volume XML, both ways, for Qumran's pools (directories) and
volumes (image files in them).

Out: ``<pool type='dir'>`` and ``<volume type='file'>`` as libvirt's dir pools write them.
In: what ``virsh pool-define-as NAME dir --target DIR``, ``vol-create-as`` and their XML
files say; anything Qumran has no place for is refused naming it (``pool/source/host``),
never dropped. A document with a DOCTYPE is refused, as for domains.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from qumran.client.schema import PoolInfo, VolumeInfo
from qumran.config import xmlread
from qumran.config.xmlread import XmlInvalid, XmlUnsupported

MAX_XML = 64 * 1024
# A pool's uuid: derived from its owner and name (Qumran stores none), so it is stable.
POOL_NAMESPACE = uuidlib.UUID("2f1f6c1e-5d0b-4b8e-9a55-7c7f2c0a8e31")

_UNITS = {
    "": 1, "b": 1, "bytes": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
    "p": 1024**5, "pib": 1024**5, "pb": 1000**5,
}  # fmt: skip


def pool_uuid(owner: int, name: str) -> str:
    return str(uuidlib.uuid5(POOL_NAMESPACE, f"{owner}/{name}"))


# --- out ----------------------------------------------------------------------------------


def pool_xml(info: PoolInfo, wire_name: str) -> str:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = wire_name
    ET.SubElement(root, "uuid").text = pool_uuid(info["owner"], info["name"])
    for key in ("capacity", "allocation", "available"):
        ET.SubElement(root, key, unit="bytes").text = str(info[key])
    ET.SubElement(root, "source")
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = info["path"]
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def volume_xml(info: VolumeInfo) -> str:
    root = ET.Element("volume", type="file")
    ET.SubElement(root, "name").text = info["name"]
    ET.SubElement(root, "key").text = info["path"]
    ET.SubElement(root, "capacity", unit="bytes").text = str(info["capacity"])
    ET.SubElement(root, "allocation", unit="bytes").text = str(info["allocation"])
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = info["path"]
    ET.SubElement(target, "format", type=info["format"])
    if info["backing"] is not None:
        backing = ET.SubElement(root, "backingStore")
        ET.SubElement(backing, "path").text = info["backing"]
        if info["backing_format"] is not None:
            ET.SubElement(backing, "format", type=info["backing_format"])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- in -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolDefinition:
    name: str
    path: str
    uuid: str | None


@dataclass(frozen=True)
class VolumeDefinition:
    name: str
    capacity: int
    format: str
    backing: str | None
    path: str | None  # target/path (and key): where it is to be; checked by the caller
    allocation: int | None  # bytes to preallocate: Qumran's volumes are sparse (0 or none)


def _empty(el: ET.Element, path: str) -> None:
    if len(el) or (el.text or "").strip() or el.attrib:
        raise XmlUnsupported(f"{path}: Qumran's pools are directories; it must be empty")


def parse_pool(text: str) -> PoolDefinition:
    root = xmlread.root(text, "pool", MAX_XML)
    xmlread.attrs(root, "pool", {"type": {"dir"}})
    if "type" not in root.attrib:
        raise XmlInvalid("pool@type: missing; Qumran's pools are type='dir'")
    top = xmlread.children(root, "pool", {"name", "uuid", "source", "target", "capacity",
                                   "allocation", "available"})  # fmt: skip
    # capacity, allocation and available are what a pool has, read back, not settings.
    if "source" in top:
        _empty(top["source"], "pool/source")
    target = xmlread.children(top["target"], "pool/target", {"path", "permissions"}) if (
        "target" in top) else {}  # fmt: skip
    if "permissions" in target:
        raise XmlUnsupported("pool/target/permissions: a pool's directory is its owner's, "
                             "as they made it; remove it")  # fmt: skip
    uuid = None
    if "uuid" in top:
        try:
            uuid = str(uuidlib.UUID(xmlread.text(top["uuid"], "pool/uuid")))
        except ValueError:
            raise XmlInvalid("pool/uuid: not a UUID") from None
    return PoolDefinition(xmlread.text(top.get("name"), "pool/name"),
                          xmlread.text(target.get("path"), "pool/target/path"), uuid)  # fmt: skip


def _size(el: ET.Element, path: str) -> int:
    unit = el.get("unit", "bytes")
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise XmlInvalid(f"{path}@unit='{unit}': not a unit (bytes, KiB, MiB, GiB, TiB, ...)")
    try:
        return int(xmlread.text(el, path)) * factor
    except ValueError:
        raise XmlInvalid(f"{path}: '{el.text}' is not a whole number") from None


def parse_volume(text: str) -> VolumeDefinition:
    root = xmlread.root(text, "volume", MAX_XML)
    xmlread.attrs(root, "volume", {"type": {"file"}})
    top = xmlread.children(root, "volume", {"name", "key", "capacity", "allocation", "target",
                                     "backingStore"})  # fmt: skip
    allocation = _size(top["allocation"], "volume/allocation") if "allocation" in top else None
    fmt, path = "qcow2", None
    if "key" in top:
        path = xmlread.text(top["key"], "volume/key")
    if "target" in top:
        target = xmlread.children(top["target"], "volume/target", {"format", "path"})
        if "format" in target:
            fmt = xmlread.attrs(target["format"], "volume/target/format",
                         {"type": {"qcow2", "raw"}}).get("type", fmt)  # fmt: skip
        if "path" in target:
            given = xmlread.text(target["path"], "volume/target/path")
            if path is not None and given != path:
                raise XmlInvalid("volume/target/path: not the same as volume/key")
            path = given
    backing = None
    if "backingStore" in top:
        store = xmlread.children(top["backingStore"], "volume/backingStore", {"path", "format"})
        backing = xmlread.text(store.get("path"), "volume/backingStore/path")
        if "format" in store:
            xmlread.attrs(store["format"], "volume/backingStore/format", {"type": {"qcow2", "raw"}})
    capacity = top.get("capacity")
    if capacity is None:
        raise XmlInvalid("volume/capacity: missing; give the size, <capacity unit='G'>8</capacity>")
    return VolumeDefinition(xmlread.text(top.get("name"), "volume/name"),
                            _size(capacity, "volume/capacity"), fmt, backing, path,
                            allocation)  # fmt: skip

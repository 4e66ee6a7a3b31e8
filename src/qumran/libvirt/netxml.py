"""libvirt's network XML, both ways, for Qumran's networks (docs/networks.md).

| Qumran type | libvirt XML |
|---|---|
| nat | ``<forward mode='nat'/>``, ``<bridge name=.../>``, ``<ip>`` with ``<dhcp><range>`` |
| isolated | no ``<forward>``, a bridge and an ``<ip>`` (libvirt's isolated network) |
| bridge | ``<forward mode='bridge'/>``, ``<bridge name=HOST-BRIDGE/>`` |
| user | nothing libvirt has: Qumran's metadata says ``type='user'`` |

What libvirt's XML has no place for (shared, the lease time, DNS forwarding off, the
user type) travels in ``<metadata>`` under Qumran's namespace, so net-dumpxml ->
net-define keeps the whole definition. Anything else is refused naming it. A network's
uuid is derived from its name (Qumran stores none).
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

from qumran.config import xmlread
from qumran.config.xmlread import XmlInvalid, XmlUnsupported

NS = "https://qumran.dev/xmlns/libvirt/network/1.0"
_Q = "{" + NS + "}"
NETWORK_NAMESPACE = uuidlib.UUID("6b0f4f7e-8d9a-4f51-a3c2-1e9e5b7d2c40")
MAX_XML = 64 * 1024


def network_uuid(name: str) -> str:
    return str(uuidlib.uuid5(NETWORK_NAMESPACE, name))


# --- out ----------------------------------------------------------------------------------


def to_xml(definition: dict[str, Any], bridge: str | None) -> str:
    """``<network>`` for a definition as the store keeps it (``bridge``: the bridge it
    uses, its default name filled in)."""
    kind = definition.get("type", "nat")
    root = ET.Element("network")
    ET.SubElement(root, "name").text = definition["name"]
    ET.SubElement(root, "uuid").text = network_uuid(definition["name"])
    _metadata(root, definition)
    if kind in ("nat", "bridge"):
        ET.SubElement(root, "forward", mode=kind)
    if bridge is not None:
        ET.SubElement(root, "bridge", name=bridge)
    if definition.get("domain"):
        ET.SubElement(root, "domain", name=definition["domain"])
    ipv4 = definition.get("ipv4")
    if ipv4 is not None:
        iface = ipaddress.IPv4Interface(ipv4["address"])
        ip = ET.SubElement(root, "ip", address=str(iface.ip), netmask=str(iface.netmask))
        dhcp = ipv4.get("dhcp")
        if dhcp is not None:
            ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=dhcp["start"], end=dhcp["end"])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _metadata(root: ET.Element, definition: dict[str, Any]) -> None:
    extra: dict[str, str] = {}
    if definition.get("type") == "user":
        extra["type"] = "user"
    if definition.get("shared"):
        extra["shared"] = "yes"
    lease = ((definition.get("ipv4") or {}).get("dhcp") or {}).get("lease_time")
    if lease not in (None, "1h"):
        extra["lease-time"] = lease
    if (definition.get("dns") or {}).get("forward") is False:
        extra["dns-forward"] = "no"
    if extra:
        ET.register_namespace("qumran", NS)
        ET.SubElement(ET.SubElement(root, "metadata"), _Q + "network", extra)


# --- in -----------------------------------------------------------------------------------


def parse(text: str) -> dict[str, Any]:
    """A Qumran network definition (to validate as any other) from ``<network>``."""
    root = xmlread.root(text, "network", MAX_XML)
    xmlread.attrs(root, "network", {})
    allowed = {"name", "uuid", "metadata", "forward", "bridge", "domain", "ip"}
    top = xmlread.children(root, "network", allowed)
    name = (top["name"].text or "").strip() if "name" in top else ""
    if not name:
        raise XmlInvalid("network/name: missing")
    if "uuid" in top and (top["uuid"].text or "").strip() != network_uuid(name):
        raise XmlUnsupported("network/uuid: a Qumran network's uuid comes from its name; "
                             "remove it")  # fmt: skip
    doc: dict[str, Any] = {"name": name}
    meta = _meta(top.get("metadata"))
    forward = None
    if "forward" in top:
        f = xmlread.attrs(top["forward"], "network/forward", {"mode": {"nat", "bridge"}})
        xmlread.children(top["forward"], "network/forward", set())
        forward = f.get("mode", "nat")
    doc["type"] = meta.pop("type", None) or forward or "isolated"
    if doc["type"] == "user" and forward is not None:
        raise XmlUnsupported("network/forward: a user network forwards nothing; remove it")
    if "bridge" in top:
        attrs = xmlread.attrs(top["bridge"], "network/bridge",
                       {"name": None, "stp": None, "delay": None})  # fmt: skip
        doc["bridge"] = xmlread.required(attrs, "name", "network/bridge")
    if "domain" in top:
        attrs = xmlread.attrs(top["domain"], "network/domain", {"name": None})
        doc["domain"] = xmlread.required(attrs, "name", "network/domain")
    if "ip" in top:
        doc["ipv4"] = _ip(top["ip"], meta.pop("lease-time", None))
    if meta.pop("shared", "no") == "yes":
        doc["shared"] = True
    if meta.pop("dns-forward", "yes") == "no":
        doc["dns"] = {"forward": False}
    return doc


def _meta(el: ET.Element | None) -> dict[str, str]:
    if el is None:
        return {}
    found: dict[str, str] = {}
    for child in el:
        if child.tag != _Q + "network":
            continue  # another program's metadata: theirs, not a setting of Qumran's
        found.update(xmlread.attrs(child, "network/metadata/qumran:network", {
            "type": {"user"}, "shared": {"yes", "no"}, "lease-time": None,
            "dns-forward": {"yes", "no"}}))  # fmt: skip
    return found


def _ip(el: ET.Element, lease_time: str | None) -> dict[str, Any]:
    path = "network/ip"
    attrs = xmlread.attrs(el, path, {"address": None, "netmask": None, "prefix": None,
                              "family": {"ipv4"}})  # fmt: skip
    address = xmlread.required(attrs, "address", path)
    mask = attrs.get("prefix") or attrs.get("netmask")
    if mask is None:
        raise XmlInvalid(f"{path}: give netmask='255.255.255.0' or prefix='24'")
    try:
        iface = ipaddress.IPv4Interface(f"{address}/{mask}")
    except ValueError as exc:
        raise XmlInvalid(f"{path}: {exc}") from None
    ipv4: dict[str, Any] = {"address": str(iface)}
    inner = xmlread.children(el, path, {"dhcp"})
    if "dhcp" in inner:
        ranges = xmlread.children(inner["dhcp"], path + "/dhcp", {"range"})
        if "range" in ranges:
            r = xmlread.attrs(ranges["range"], path + "/dhcp/range", {"start": None, "end": None})
            dhcp = {"start": xmlread.required(r, "start", path + "/dhcp/range"),
                    "end": xmlread.required(r, "end", path + "/dhcp/range")}  # fmt: skip
            if lease_time is not None:
                dhcp["lease_time"] = lease_time
            ipv4["dhcp"] = dhcp
    return ipv4

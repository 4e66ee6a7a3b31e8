"""Domain XML and NICs: a NIC on a virtual network is `<interface type='network'>` both
ways; a user-mode one stays `type='user'`; what does not fit is refused by its path."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from qumran.config.domxml import parse, to_xml
from qumran.config.validate import validate_spec
from qumran.config.xmlread import XmlInvalid, XmlUnsupported

UUID = "6f1c1d7e-2b1c-4a55-9d0e-8f4c2f3a1b2c"
BASE = {"name": "web1", "memory": 256, "boot": {"kernel": "/boot/vmlinuz"}}


def xml_with(interface: str) -> str:
    return (f"<domain type='qemu'><name>web1</name><memory unit='MiB'>256</memory>"
            f"<os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>"
            f"<devices>{interface}</devices></domain>")  # fmt: skip


def test_a_network_nic_goes_both_ways() -> None:
    spec = validate_spec(BASE | {"nics": [{"network": "default", "mac": "52:54:00:aa:bb:cc"},
                                          {"type": "user"}]})  # fmt: skip
    text = to_xml("web1", UUID, spec)
    first = ET.fromstring(text).find("devices/interface")
    assert first is not None and first.get("type") == "network"
    assert first.find("source") is not None and first.find("source").get("network") == "default"
    doc, uuid = parse(text)
    assert uuid == UUID
    back = validate_spec(doc)
    assert back.nics == spec.nics


def test_a_network_interface_from_virsh_xml() -> None:
    doc, _ = parse(xml_with("<interface type='network'><source network='lab'/>"
                            "<mac address='52:54:00:01:02:03'/><model type='virtio'/>"
                            "</interface>"))  # fmt: skip
    assert doc["nics"] == [{"network": "lab", "mac": "52:54:00:01:02:03"}]


@pytest.mark.parametrize(
    ("interface", "error", "where"),
    [
        ("<interface type='network'/>", XmlInvalid, "interface[1]/source"),
        ("<interface type='network'><source bridge='br0'/></interface>", XmlUnsupported,
         "interface[1]/source@bridge"),
        ("<interface type='user'><source network='x'/></interface>", XmlUnsupported,
         "interface[1]/source"),
        ("<interface type='bridge'><source bridge='br0'/></interface>", XmlUnsupported,
         "interface[1]@type='bridge'"),
    ],
)  # fmt: skip
def test_what_does_not_fit_is_refused_by_its_path(
    interface: str, error: type[Exception], where: str
) -> None:
    with pytest.raises(error, match=re.escape(f"domain/devices/{where}")):
        parse(xml_with(interface))


def test_the_machine_is_the_one_qemu_runs_and_another_is_refused() -> None:
    from qumran.drivers.qemu.cmdline import MACHINE as RUN

    xml = to_xml("m", UUID, validate_spec(BASE))
    assert parse(xml)[0]["name"] == "m"
    assert f'machine="{RUN}"' in xml, xml
    for older in ("pc", "pc-q35-7.2"):  # Qumran's dumpxml before q35; a versioned q35
        assert parse(xml.replace(f"machine=\"{RUN}\"", f"machine=\"{older}\""))[0]
    with pytest.raises(XmlUnsupported, match=r"domain/os/type@machine='pc-i440fx-7.2'"):
        parse(xml.replace(f'machine="{RUN}"', 'machine="pc-i440fx-7.2"'))


def test_a_vnc_listen_address_is_refused_not_dropped() -> None:
    xml = to_xml("m", UUID, validate_spec(BASE | {"graphics": True}))
    graphics = '<graphics type="vnc" port="-1" autoport="yes" />'
    assert graphics in xml, xml
    assert parse(xml.replace(graphics, graphics[:-3] + "><listen type='none'/></graphics>"))
    address = "><listen type='address' address='0.0.0.0'/></graphics>"
    for listen in (' listen="0.0.0.0" />', address):
        with pytest.raises(XmlUnsupported, match="listens on no address"):
            parse(xml.replace(graphics, graphics[:-3] + listen))

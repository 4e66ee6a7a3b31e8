"""Network definitions, and the texts qumrand derives from them: the nftables script,
dnsmasq's configuration and its lease file. (Running them: test_networks_netns.py.)"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from qumran.config.network import default_bridge_name, validate_network
from qumran.daemon import config
from qumran.daemon.network import dnsmasq, nft
from qumran.errors import InvalidArgument

NAT: dict[str, Any] = {
    "name": "lab",
    "ipv4": {"address": "192.168.123.1/24",
             "dhcp": {"start": "192.168.123.2", "end": "192.168.123.254"}},
}  # fmt: skip


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_network(doc)
    message = info.value.message
    assert message.startswith("invalid network definition: ") and "\n" not in message
    return message


def test_a_nat_definition_and_its_defaults() -> None:
    spec = validate_network(NAT)
    assert spec.type == "nat" and spec.bridge_name == "qbr-lab" and spec.dns.forward
    assert not spec.shared and not spec.autostart and spec.managed


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"name": "../x"}, "name: '../x' is a path"),
        ({"name": "a b"}, "name: 'a b' is not a network name"),
        ({"name": "x"}, "ipv4: a nat network needs an address"),
        ({**NAT, "colour": 1}, "colour: unknown field"),
        ({**NAT, "ipv4": {"address": "192.168.123.0/24"}}, "network address"),
        ({**NAT, "ipv4": {"address": "192.168.123.1/31"}}, "no room for guests"),
        ({**NAT, "ipv4": {"address": "192.168.123.1/24",
                          "dhcp": {"start": "192.168.124.2", "end": "192.168.123.9"}}},
         "dhcp.start: 192.168.124.2 is outside the subnet"),
        ({**NAT, "ipv4": {"address": "192.168.123.1/24",
                          "dhcp": {"start": "192.168.123.9", "end": "192.168.123.2"}}},
         "comes after"),
        ({**NAT, "ipv4": {"address": "192.168.123.5/24",
                          "dhcp": {"start": "192.168.123.2", "end": "192.168.123.9"}}},
         "holds the bridge's own address"),
        ({**NAT, "bridge": "a-very-long-bridge-name"}, "bridge: "),
        ({**NAT, "bridge": "br;rm"}, "not an interface name"),
        ({**NAT, "domain": "bad domain"}, "domain: "),
        ({"name": "b", "type": "bridge"}, "bridge: a bridge network names"),
        ({"name": "u", "type": "user", "bridge": "br0"}, "bridge: not used by a user network"),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_naming_the_field(doc: dict[str, Any], words: str) -> None:
    assert words in refused(doc)


def test_bridge_names_fit_and_stay_apart() -> None:
    long_a, long_b = "engineering-lab-1", "engineering-lab-2"
    a, b = default_bridge_name(long_a), default_bridge_name(long_b)
    assert len(a) <= 15 and len(b) <= 15 and a != b and a.startswith("qbr-")
    assert default_bridge_name(long_a) == a  # stable: a restarted qumrand finds it


def test_the_ruleset_is_whole_and_removes_itself_when_empty() -> None:
    rules = [nft.Rules("lab", "qbr-lab", IPv4Network("192.168.123.0/24"), nat=True),
             nft.Rules("iso", "qbr-iso", IPv4Network("10.0.0.0/24"), nat=False)]  # fmt: skip
    script = nft.ruleset(rules)
    assert script.startswith("table inet qumran\ndelete table inet qumran\ntable inet qumran {")
    assert "masquerade" in script and script.count("masquerade") == 1
    assert 'iifname "qbr-iso" drop' in script and 'oifname "qbr-iso" drop' in script
    # every "into a bridge: drop" comes before any "out of a NAT bridge: accept"
    assert script.index('oifname "qbr-iso" drop') < script.index("ip saddr 192.168.123.0/24 accept")
    assert nft.ruleset([]) == "table inet qumran\ndelete table inet qumran\n"


def test_dnsmasq_configuration(tmp_path: Path) -> None:
    files = dnsmasq.Files(tmp_path / "run", tmp_path / "state")
    spec = validate_network({**NAT, "type": "isolated", "domain": "lab", "dns": {"forward": False}})
    text = dnsmasq.config(spec, "qbr-lab", files).splitlines()
    for line in ("bind-interfaces", "interface=qbr-lab", "except-interface=lo", "no-resolv",
                 "local=/lab/", "dhcp-range=192.168.123.2,192.168.123.254,255.255.255.0,1h",
                 f"dhcp-leasefile={files.leases}", f"dhcp-hostsfile={files.hosts}",
                 "dhcp-option=3"):  # fmt: skip
        assert line in text
    forwarding = dnsmasq.config(validate_network(NAT), "qbr-lab", files).splitlines()
    assert "no-resolv" not in forwarding and "dhcp-option=3" not in forwarding


def test_lease_file_parsing(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    leases.write_text(
        "1700000000 52:54:00:AA:bb:cc 192.168.123.10 web1 01:52:54:00:aa:bb:cc\n"
        "0 52:54:00:00:00:01 192.168.123.11 * *\n"
        "duid 00:01:00:01\n"
        "1700000000 52:54:00:00:00:02 fd00::2 v6 *\n"
        "torn\n"
    )
    found = dnsmasq.leases(leases)
    assert [(x.mac, x.ip, x.hostname, x.expires) for x in found] == [
        ("52:54:00:aa:bb:cc", IPv4Address("192.168.123.10"), "web1", 1700000000),
        ("52:54:00:00:00:01", IPv4Address("192.168.123.11"), None, 0),
    ]
    assert dnsmasq.leases(tmp_path / "none") == []


def test_daemon_settings_for_networks(tmp_path: Path) -> None:
    file = tmp_path / "q.toml"
    file.write_text("[networks]\nenabled = false\ndefault = true\n")
    settings = config.resolve(config.build_parser().parse_args(["--config", str(file)]))
    assert not settings.networks_enabled and not settings.make_default_network
    settings = config.resolve(config.build_parser().parse_args(
        ["--no-config", "--state-dir", str(tmp_path)]))  # fmt: skip
    assert settings.networks_enabled and not settings.make_default_network  # not the system one
    settings = config.resolve(config.build_parser().parse_args(
        ["--no-config", "--default-network", "--state-dir", str(tmp_path)]))  # fmt: skip
    assert settings.make_default_network
    file.write_text("[networks]\nenable = true\n")
    with pytest.raises(config.ConfigError, match=r"line 2: networks\.enable: unknown setting"):
        config.resolve(config.build_parser().parse_args(["--config", str(file)]))

"""The ``cloud_init:`` section and NIC port forwards of a definition: what is taken, and
the one-line error (naming the field path) for what is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qumran.config.cloudinit import check_hostname, hostname_for, is_crypt_hash
from qumran.config.files import resolve_paths
from qumran.config.spec import VmSpec
from qumran.config.validate import validate_spec
from qumran.errors import InvalidArgument

ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq8QUnwsRItguRWKtfc2a2NAucfs0frmBmleYSNEfob alice@example"
)
ECDSA = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBE51WlHpRTg+KfI5if"
    "vbFbsSgpyXocPExD5fyffe/Gwxziev1i1cL6gq06/f9RjYtFuPuPDRtnRFzUxlwHjGKWg="
)
SHA512 = (
    "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/"
    "jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
)


def define(**fields: Any) -> VmSpec:
    doc: dict[str, Any] = {"name": "web1", "memory": 256, "boot": {"kernel": "/boot/vmlinuz"}}
    return validate_spec({**doc, **fields})


def refused(**fields: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        define(**fields)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_full_section_is_taken_as_written() -> None:
    section = {
        "hostname": "web1.example.org",
        "users": [
            {
                "name": "debian",
                "ssh_authorized_keys": [ED25519, ECDSA],
                "password": SHA512,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
            },
            {"name": "_svc-1"},
        ],
        "packages": ["curl", "nginx=1.22.1-9", "g++"],
        "runcmd": ["echo hello > /dev/console", "systemctl enable --now nginx"],
        "network_config": {"version": 2, "ethernets": {"e": {"match": {"name": "en*"}}}},
    }
    spec = define(cloud_init=section)
    ci = spec.cloud_init
    assert ci is not None
    assert ci.hostname == "web1.example.org"
    assert [u.name for u in ci.users] == ["debian", "_svc-1"]
    assert ci.users[0].ssh_authorized_keys == (ED25519, ECDSA)
    assert ci.packages == ("curl", "nginx=1.22.1-9", "g++")
    # What the store keeps is what validates again (the daemon reloads it at each start).
    again = VmSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


def test_no_section_and_an_empty_one() -> None:
    assert define().cloud_init is None
    ci = define(cloud_init={}).cloud_init
    assert ci is not None and ci.users == () and ci.hostname is None


def test_network_config_may_sit_under_network() -> None:
    ci = define(cloud_init={"network_config": {"network": {"version": 2}}}).cloud_init
    assert ci is not None and ci.network_config == {"network": {"version": 2}}


@pytest.mark.parametrize(
    ("section", "where", "why"),
    [
        ({"hostname": "-web"}, "cloud_init.hostname", "is not a host name"),
        ({"hostname": "web_1"}, "cloud_init.hostname", "is not a host name"),
        ({"hostname": "a" * 64}, "cloud_init.hostname", "is not a host name"),
        ({"hostname": "10.0.0.1"}, "cloud_init.hostname", "is not a host name"),
        ({"users": [{"name": "Debian"}]}, "cloud_init.users[0].name", "not a Linux user name"),
        ({"users": [{"name": "a" * 33}]}, "cloud_init.users[0].name", "not a Linux user name"),
        ({"users": [{"name": "x y"}]}, "cloud_init.users[0].name", "not a Linux user name"),
        ({"users": [{}]}, "cloud_init.users[0].name", "required field is missing"),
        (
            {"users": [{"name": "a", "ssh_authorized_keys": [ED25519, "AAAA"]}]},
            "cloud_init.users[0].ssh_authorized_keys[1]",
            "starts with the key type",
        ),
        (
            {"users": [{"name": "a", "ssh_authorized_keys": ["-----BEGIN OPENSSH PRIVATE KEY"]}]},
            "cloud_init.users[0].ssh_authorized_keys[0]",
            "give the contents of a .pub file",
        ),
        (
            {"users": [{"name": "a", "ssh_authorized_keys": [ED25519[:60]]}]},
            "cloud_init.users[0].ssh_authorized_keys[0]",
            "",
        ),
        (  # an ed25519 key's data under another type's name
            {"users": [{"name": "a", "ssh_authorized_keys": ["ssh-rsa" + ED25519[11:]]}]},
            "cloud_init.users[0].ssh_authorized_keys[0]",
            "is not a whole ssh-rsa key",
        ),
        (
            {"users": [{"name": "a", "ssh_authorized_keys": [ED25519 + "\nssh-rsa AAAA"]}]},
            "cloud_init.users[0].ssh_authorized_keys[0]",
            "one line",
        ),
        (
            {"users": [{"name": "a", "ssh_authorized_keys": ["ssh-ed25519 !!!!"]}]},
            "cloud_init.users[0].ssh_authorized_keys[0]",
            "not base64",
        ),
        ({"users": [{"name": "a", "password": ""}]}, "cloud_init.users[0].password", "1-1024"),
        (
            {"users": [{"name": "a", "password": "x\ny"}]},
            "cloud_init.users[0].password",
            "one line",
        ),
        ({"users": [{"name": "a", "sudo": "ALL\nALL"}]}, "cloud_init.users[0].sudo", "one line"),
        ({"users": [{"name": "a", "shell": "bash"}]}, "cloud_init.users[0].shell", "absolute"),
        ({"users": [{"name": "a"}, {"name": "a"}]}, "cloud_init.users", "more than once"),
        ({"users": [{"name": "a", "groups": ["x"]}]}, "cloud_init.users[0].groups", "unknown"),
        ({"packages": ["curl", "rm -rf"]}, "cloud_init.packages[1]", "not a package name"),
        ({"runcmd": [""]}, "cloud_init.runcmd[0]", "a command is"),
        ({"runcmd": ["x" * 5000]}, "cloud_init.runcmd[0]", "a command is"),
        ({"user_data": "cloud.yaml"}, "cloud_init.user_data", "must be absolute"),
        (
            {"user_data": "/u.yaml", "users": [{"name": "a"}]},
            "cloud_init",
            "user_data replaces the generated user-data, so users would be ignored",
        ),
        ({"network_config": {"ethernets": {}}}, "cloud_init.network_config", "version: 2"),
        ({"network_config": {"version": 1}}, "cloud_init.network_config", "version: 2"),
        ({"network_config": ["version", 2]}, "cloud_init.network_config", ""),
        (
            {"network_config": {"version": 2, "x": float("nan")}},
            "cloud_init.network_config",
            "JSON cannot carry",
        ),
        ({"bootcmd": ["x"]}, "cloud_init.bootcmd", "unknown field"),
        ("yes", "cloud_init", ""),
    ],
)
def test_a_bad_section_is_refused_naming_the_field(section: Any, where: str, why: str) -> None:
    message = refused(cloud_init=section)
    assert message.startswith(f"invalid definition: {where}: "), message
    assert why in message


@pytest.mark.parametrize(
    "rule",
    ["tcp:127.0.0.1:2222-:22", "tcp::8080-:80", "udp:0.0.0.0:5353-10.0.2.15:53", "tcp::1-:65535"],
)
def test_port_forwards_in_qemu_syntax_are_taken(rule: str) -> None:
    assert define(nics=[{"type": "user", "forward": [rule]}]).nics[0].forward == (rule,)


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("tcp:127.0.0.1:0-:22", "host port 0 is not a port"),
        ("tcp::65536-:22", "host port 65536 is not a port"),
        ("tcp::2222-:0", "guest port 0 is not a port"),
        ("tcp:localhost:2222-:22", "is not a port forward"),
        ("tcp:1.2.3:2222-:22", "host address '1.2.3' is not an IPv4 address"),
        ("tcp::2222-10.0.2.256:22", "guest address '10.0.2.256' is not an IPv4 address"),
        ("tcp:[::1]:2222-:22", "is not a port forward"),
        ("sctp::2222-:22", "is not a port forward"),
        ("tcp::2222-:22,hostfwd=tcp::1-:1", "is not a port forward"),
        ("tcp::2222-2223-:22", "is not a port forward"),
        ("tcp::2222-:22\n", "is not a port forward"),
        ("", "is not a port forward"),
    ],
)
def test_a_bad_port_forward_is_refused(rule: str, why: str) -> None:
    message = refused(nics=[{"forward": [rule]}])
    assert message.startswith("invalid definition: nics[0].forward: "), message
    assert why in message


@pytest.mark.parametrize(
    "nics",
    [
        [{"forward": ["tcp:127.0.0.1:2222-:22", "tcp:127.0.0.1:2222-:23"]}],
        [{"forward": ["tcp::2222-:22", "tcp:127.0.0.1:2222-:23"]}],
        [{"forward": ["tcp:127.0.0.1:2222-:22"]}, {"forward": ["tcp::2222-:22"]}],
    ],
)
def test_one_host_port_forwarded_twice_is_refused(nics: list[dict[str, Any]]) -> None:
    message = refused(nics=nics)
    assert "both" in message and "port 2222" in message and "own port" in message


def test_the_same_port_number_on_other_protocols_or_addresses_is_fine() -> None:
    rules = ["tcp:127.0.0.1:2222-:22", "udp:127.0.0.1:2222-:22", "tcp:127.0.0.2:2222-:22"]
    assert len(define(nics=[{"forward": rules}]).nics[0].forwards) == 3


def test_hostnames_made_from_vm_names() -> None:
    assert hostname_for("web1") == "web1"
    assert hostname_for("my_vm.test+1") == "my-vm-test-1"
    assert hostname_for("_") == "localhost"
    for name in ("web1", "my_vm.test+1", "a" * 63, "0.0"):
        check_hostname(hostname_for(name))


def test_crypt_hashes_are_told_from_passwords() -> None:
    assert is_crypt_hash(SHA512)
    assert is_crypt_hash("$y$j9T$abcdefghijklmnop$0123456789abcdefghijklmnopqrstuvwxyzABCDEF")
    assert not is_crypt_hash("hunter2")
    assert not is_crypt_hash("$6$")


def test_a_relative_user_data_path_is_resolved_against_the_file() -> None:
    doc = resolve_paths({"cloud_init": {"user_data": "seed/user.yaml"}}, Path("/defs"))
    assert doc["cloud_init"]["user_data"] == "/defs/seed/user.yaml"

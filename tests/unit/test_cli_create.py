"""The pieces of `qumran create` and `qumran ssh` that need no guest: host keys from a
console's output, the known_hosts file, the SSH target of a definition, the key lookup.
(tests/integration/test_create_ssh.py runs the whole path with a real guest.)"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from qumran.cli import create, guestssh, hostkeys
from qumran.errors import InvalidArgument, InvalidState, NotFound

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBq3Jq5iJ0pQ0o4u7yWc0QeV0n0Vt9o2dXc8o1k4m0aN"
ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKp="

# As cloud-init's keys-to-console prints it on a serial console: CRLF line ends, the
# fingerprints block first, and a kernel message in the middle of the keys.
CONSOLE = (
    "[   41.2] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'\r\n"
    "<14>Dec  5 06:30:01 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
    "<14>Dec  5 06:30:01 cloud-init: 256 SHA256:abc root@web1 (ED25519)\r\n"
    "<14>Dec  5 06:30:01 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----\r\n"
    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
    f"{ECDSA} root@web1\r\n"
    "[   41.9] random: crng init done\r\n"
    f"{ED25519} root@web1\r\n"
    "-----END SSH HOST KEY KEYS-----\r\n"
    "[   42.0] cloud-init[512]: Cloud-init v. 22.4.2 finished at Sat, 05 Dec 2026 06:30:02"
    " +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 42.01 seconds\r\n"
).encode()


def test_host_keys_come_from_the_last_complete_block() -> None:
    assert hostkeys.from_console(CONSOLE) == [ECDSA, ED25519]
    older = CONSOLE.replace(ED25519.encode(), b"ssh-ed25519 AAAAold")
    assert hostkeys.from_console(older + CONSOLE) == [ECDSA, ED25519]
    unfinished = CONSOLE + b"-----BEGIN SSH HOST KEY KEYS-----\r\nssh-rsa AAAAhalf"
    assert hostkeys.from_console(unfinished) == [ECDSA, ED25519]
    assert hostkeys.from_console(CONSOLE.split(b"-----END SSH HOST KEY KEYS")[0]) == []
    assert hostkeys.from_console(b"") == []


def test_known_hosts_keeps_other_vms_and_replaces_this_ones(tmp_path: Path) -> None:
    path = tmp_path / "qumran" / "known_hosts"
    hostkeys.save("qumran-a-11111111", [ED25519], path)
    hostkeys.save("qumran-b-22222222", [ECDSA, ED25519], path)
    hostkeys.save("qumran-a-11111111", [ECDSA], path)
    assert path.read_text().splitlines() == [
        f"qumran-b-22222222 {ECDSA}",
        f"qumran-b-22222222 {ED25519}",
        f"qumran-a-11111111 {ECDSA}",
    ]
    assert hostkeys.known("qumran-a-11111111", path)
    assert not hostkeys.known("qumran-c-33333333", path)
    assert [p.name for p in path.parent.iterdir()] == ["known_hosts"]  # no temp file left


def test_ssh_reads_the_saved_file(tmp_path: Path) -> None:
    """ssh-keygen (OpenSSH's own reader) finds the key under the alias we write."""
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    path = hostkeys.save(hostkeys.alias("web1", "0123456789abcdef"), [line], tmp_path / "kh")
    found = subprocess.run(
        ["ssh-keygen", "-F", "qumran-web1-01234567", "-f", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert line in found.stdout


def _vm(**definition: Any) -> Any:
    return {"name": "web1", "uuid": "0123456789abcdef", "definition": definition}


def test_the_ssh_target_is_the_forward_of_port_22() -> None:
    nics = [{"type": "user", "forward": ["tcp:127.0.0.1:8080-:80", "tcp:127.0.0.1:40222-:22"]}]
    assert guestssh.ssh_target(_vm(nics=nics)) == ("127.0.0.1", 40222)
    assert guestssh.ssh_target(_vm(nics=[{"forward": ["tcp::2222-10.0.2.15:22"]}])) == (
        "127.0.0.1",
        2222,
    )
    with pytest.raises(InvalidArgument, match="no forward to its SSH port"):
        guestssh.ssh_target(_vm(nics=[{"forward": ["udp:127.0.0.1:5353-:22"]}]))
    with pytest.raises(InvalidArgument, match="qumran edit web1"):
        guestssh.ssh_target(_vm())


def test_without_a_forward_the_ssh_target_is_the_leased_address() -> None:
    vm = _vm(nics=[{"type": "network", "network": "default", "mac": "52:54:00:00:00:01"}])
    row = {"index": 0, "interface": "qt1n0", "type": "network", "network": "default",
           "model": "virtio", "mac": "52:54:00:00:00:01", "ip": None, "hostname": None,
           "counters": None}  # fmt: skip
    with pytest.raises(InvalidState, match="no leased address yet"):
        guestssh.ssh_target(vm, lambda: [row])  # type: ignore[list-item]
    leased = {**row, "ip": "192.168.122.7"}
    assert guestssh.ssh_target(vm, lambda: [leased]) == ("192.168.122.7", 22)  # type: ignore[list-item]
    # A forward of port 22 still wins; the daemon is not even asked.
    nics = [{"forward": ["tcp:127.0.0.1:2222-:22"]}, vm["definition"]["nics"][0]]
    assert guestssh.ssh_target(_vm(nics=nics), lambda: 1 / 0) == ("127.0.0.1", 2222)  # type: ignore[arg-type,return-value]


def test_the_guest_user_is_the_first_cloud_init_user() -> None:
    users = [{"name": "ann"}, {"name": "bo"}]
    assert guestssh.guest_user(_vm(cloud_init={"users": users})) == "ann"
    assert guestssh.guest_user(_vm(cloud_init={"hostname": "x"})) is None
    assert guestssh.guest_user(_vm(cloud_init=None)) is None


def test_the_default_key_is_the_first_the_user_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NotFound, match="ssh-keygen -t ed25519"):
        create.ssh_key(None)
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E= me@host\n")
    assert create.ssh_key(None) == (str(ssh / "id_rsa.pub"), "ssh-rsa AAAAB3NzaC1yc2E= me@host")
    (ssh / "id_ed25519.pub").write_text(f"{ED25519} me@host\n")
    assert create.ssh_key(None)[0] == str(ssh / "id_ed25519.pub")
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(InvalidArgument, match="not an SSH public key"):
        create.ssh_key(str(ssh / "id_ed25519"))
    with pytest.raises(NotFound, match=r"--ssh-key /nonexistent\.pub: no such file"):
        create.ssh_key("/nonexistent.pub")


def test_a_free_port_is_free() -> None:
    import socket

    port = create.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would raise EADDRINUSE


def test_the_definition_has_a_forward_or_a_network_nic() -> None:
    import argparse

    args = argparse.Namespace(name="web1", memory="1G", vcpus=2, pool="default", network=None)
    doc = create.definition(args, "web1", {"users": []}, 40222)
    assert doc["nics"] == [{"type": "user", "forward": ["tcp:127.0.0.1:40222-:22"]}]
    assert doc["disks"] == [{"volume": "web1", "pool": "default"}]
    assert doc["boot"] == {"disk": 0}
    args.network = "default"
    assert create.definition(args, "web1", {}, None)["nics"] == [{"network": "default"}]
    # Both are definitions qumrand takes (the network's existence is checked at define).
    from qumran.config.validate import validate_spec

    validate_spec(create.definition(args, "web1", {}, None) | {"disks": [{"path": "/d"}]})


def test_a_native_vm_boots_the_images_own_kernel(tmp_path: Path) -> None:
    import argparse

    from qumran.config.validate import validate_spec
    from qumran.images.cache import Image, ImageInfo

    info = ImageInfo(name="debian-12", disk="disk.qcow2", format="qcow2", digest="d",
                     created="now", source="built", virtual_size=1 << 30, kernel="vmlinuz",
                     initrd="initrd.img", cmdline="root=UUID=x ro console=ttyS0")  # fmt: skip
    args = argparse.Namespace(name="web1", memory="1G", vcpus=1, pool="default",
                              network=None, hypervisor="native")  # fmt: skip
    boot = create.boot_section(args, Image(tmp_path, info))
    assert boot == {"kernel": str(tmp_path / "vmlinuz"), "initrd": str(tmp_path / "initrd.img"),
                    "cmdline": "root=UUID=x ro console=ttyS0"}  # fmt: skip
    doc = create.definition(args, "web1", {"users": []}, 40222, boot)
    assert (doc["hypervisor"], doc["boot"]) == ("native", boot)
    validate_spec(doc | {"disks": [{"path": "/d"}]})
    imported = ImageInfo(name="mine", disk="disk.qcow2", format="qcow2", digest="d",
                         created="now", source="imported", virtual_size=1 << 30)  # fmt: skip
    with pytest.raises(InvalidArgument, match=r"^--hypervisor native: image mine has no kernel"):
        create.boot_section(args, Image(tmp_path, imported))
    args.hypervisor = "qemu"
    assert create.boot_section(args, Image(tmp_path, imported)) == {"disk": 0}


def test_ssh_options_pass_through_except_the_host_key_ones() -> None:
    assert guestssh.checked_option("ConnectTimeout=5") == "ConnectTimeout=5"
    assert guestssh.checked_option("ServerAliveInterval 30") == "ServerAliveInterval 30"
    for option in ("StrictHostKeyChecking=no", "userknownhostsfile=/dev/null",
                   "HostKeyAlias x", "UpdateHostKeys=yes"):  # fmt: skip
        with pytest.raises(InvalidArgument, match="sets the host-key options itself"):
            guestssh.checked_option(option)

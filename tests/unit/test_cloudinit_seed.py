"""NoCloud seeds, read back with pycdlib: the label, the three files under their names in
every directory tree a guest may read, what they say, and an instance id that moves only
with the section."""

from __future__ import annotations

import io
from typing import Any

import pycdlib
import pytest
import yaml

from qumran.config.cloudinit import CloudInit
from qumran.images.cloudinit import (
    MAX_USER_DATA,
    HostKey,
    build_seed,
    cloud_config,
    instance_id,
    seed_files,
)

ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq8QUnwsRItguRWKtfc2a2NAucfs0frmBmleYSNEfob alice@example"
)
SHA512 = (
    "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/"
    "jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
)
UUID = "6f1c1d7e-2b1c-4a55-9d0e-8f4c2f3a1b2c"


def section(**fields: Any) -> CloudInit:
    return CloudInit.model_validate(fields)


def read_iso(data: bytes) -> tuple[str, dict[str, dict[str, bytes]]]:
    """The volume label and, per name space (iso9660, rr, joliet), the root's files."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        trees: dict[str, dict[str, bytes]] = {}
        for kind in ("iso_path", "rr_path", "joliet_path"):
            files: dict[str, bytes] = {}
            for child in iso.list_children(**{kind: "/"}):
                if child.is_dot() or child.is_dotdot():
                    continue
                if kind == "rr_path":
                    name = child.rock_ridge.name().decode()
                elif kind == "joliet_path":
                    name = child.file_identifier().decode("utf-16_be")
                else:
                    name = child.file_identifier().decode()
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **{kind: "/" + name})
                files[name] = out.getvalue()
            trees[kind.removesuffix("_path")] = files
        return label, trees
    finally:
        iso.close()


def test_the_seed_is_an_iso_labelled_cidata_with_the_nocloud_files() -> None:
    ci = section(
        hostname="web1",
        users=[{"name": "debian", "ssh_authorized_keys": [ED25519]}],
        runcmd=["echo QUMRAN-MARKER > /dev/console"],
        network_config={"version": 2, "ethernets": {"e0": {"match": {"name": "en*"}}}},
    )
    label, trees = read_iso(build_seed(ci, "web1", UUID))
    assert label == "cidata"
    files = seed_files(ci, "web1", UUID)
    expected = {
        "meta-data": files.meta_data,
        "user-data": files.user_data,
        "network-config": files.network_config,
    }
    # Linux reads the Rock Ridge names; Joliet is there for others; both are the same files.
    assert trees["rr"] == expected
    assert trees["joliet"] == expected
    assert sorted(trees["iso"]) == ["METADATA.;1", "NETWORKC.;1", "USERDATA.;1"]

    meta = yaml.safe_load(files.meta_data)
    assert meta == {"instance-id": files.instance_id, "local-hostname": "web1"}
    assert files.user_data.startswith(b"#cloud-config\n")
    user = yaml.safe_load(files.user_data)
    assert user == {
        "users": [{"name": "debian", "ssh_authorized_keys": [ED25519], "lock_passwd": True}],
        "ssh_pwauth": False,
        "runcmd": ["echo QUMRAN-MARKER > /dev/console"],
    }
    assert files.network_config is not None
    assert yaml.safe_load(files.network_config) == ci.network_config


def test_without_network_config_there_is_no_such_file() -> None:
    _, trees = read_iso(build_seed(section(), "web1", UUID))
    assert sorted(trees["rr"]) == ["meta-data", "user-data"]


def test_the_host_name_defaults_to_the_vm_name_made_a_host_name() -> None:
    meta = yaml.safe_load(seed_files(section(), "my_vm.1", UUID).meta_data)
    assert meta["local-hostname"] == "my-vm-1"


def test_no_users_keeps_the_image_default_user() -> None:
    config = cloud_config(section(packages=["curl"]))
    assert "users" not in config
    assert config == {"ssh_pwauth": False, "packages": ["curl"]}


def test_passwords_hashed_or_plain_and_ssh_password_login_only_with_one() -> None:
    config = cloud_config(
        section(
            users=[
                {"name": "a", "password": SHA512, "sudo": "ALL=(ALL) NOPASSWD:ALL"},
                {"name": "b", "password": "horse", "shell": "/bin/bash"},
                {"name": "c"},
            ]
        )
    )
    sudo = "ALL=(ALL) NOPASSWD:ALL"
    assert config["users"] == [
        {"name": "a", "hashed_passwd": SHA512, "lock_passwd": False, "sudo": sudo},
        {"name": "b", "plain_text_passwd": "horse", "lock_passwd": False, "shell": "/bin/bash"},
        {"name": "c", "lock_passwd": True},
    ]
    assert config["ssh_pwauth"] is True


def test_the_host_keys_and_final_message_are_left_to_cloud_init_defaults() -> None:
    text = seed_files(section(users=[{"name": "a"}]), "web1", UUID).user_data.decode()
    for key in ("emit_keys_to_console", "ssh_key_console_blacklist", "final_message", "ssh:"):
        assert key not in text


def test_a_host_key_becomes_the_guests_only_one_and_not_the_instance_id() -> None:
    key = HostKey("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
                  ED25519.rsplit(" ", 1)[0])  # fmt: skip
    ci = section(users=[{"name": "a"}])
    files = seed_files(ci, "web1", UUID, host_key=key)
    config = yaml.safe_load(files.user_data)
    # The public key file keeps its newline (the console's key block needs it).
    public = key.public + "\n"
    assert config["ssh_keys"] == {"ed25519_private": key.private, "ed25519_public": public}
    assert config["ssh_genkeytypes"] == []  # no other type the client could not check
    assert files.instance_id == seed_files(ci, "web1", UUID).instance_id
    # A user's own user-data is theirs: no key is put into it.
    own = seed_files(section(user_data="/u"), "web1", UUID, b"#cloud-config\n", key)
    assert own.user_data == b"#cloud-config\n"


def test_values_yaml_would_read_otherwise_stay_strings() -> None:
    ci = section(runcmd=["yes", "- x: y", "#not a comment", "1.0"], packages=["on"])
    config = yaml.safe_load(seed_files(ci, "web1", UUID).user_data)
    assert config["runcmd"] == ["yes", "- x: y", "#not a comment", "1.0"]
    assert config["packages"] == ["on"]


def test_a_user_data_file_is_passed_through_byte_for_byte() -> None:
    script = b"#!/bin/sh\necho \xff raw bytes\n"
    ci = section(user_data="/home/u/user-data.sh", hostname="h")
    files = seed_files(ci, "web1", UUID, script)
    assert files.user_data == script
    _, trees = read_iso(build_seed(ci, "web1", UUID, script))
    assert trees["rr"]["user-data"] == script
    assert yaml.safe_load(trees["rr"]["meta-data"])["local-hostname"] == "h"


def test_an_oversized_user_data_file_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than 1 MiB"):
        seed_files(section(user_data="/u"), "web1", UUID, b"x" * (MAX_USER_DATA + 1))


def test_the_instance_id_is_stable_for_the_same_section() -> None:
    a = section(hostname="h", users=[{"name": "debian", "ssh_authorized_keys": [ED25519]}])
    b = CloudInit.model_validate(a.model_dump(mode="json"))  # as the store reloads it
    assert instance_id(a, UUID) == instance_id(b, UUID)
    assert seed_files(a, "web1", UUID).instance_id == instance_id(a, UUID)
    assert instance_id(a, UUID).startswith("qumran-") and len(instance_id(a, UUID)) == 39
    # Key order in a mapping is not a change.
    n1 = section(network_config={"version": 2, "ethernets": {}})
    n2 = section(network_config={"ethernets": {}, "version": 2})
    assert instance_id(n1, UUID) == instance_id(n2, UUID)


@pytest.mark.parametrize(
    "changed",
    [
        {"hostname": "h2"},
        {"hostname": "h", "users": [{"name": "debian"}]},
        {"hostname": "h", "runcmd": ["true"]},
        {"hostname": "h", "packages": ["curl"]},
        {"hostname": "h", "network_config": {"version": 2}},
    ],
)
def test_the_instance_id_changes_with_the_section(changed: dict[str, Any]) -> None:
    assert instance_id(section(hostname="h"), UUID) != instance_id(section(**changed), UUID)


def test_the_instance_id_differs_between_vms_and_with_the_user_data_file() -> None:
    ci = section(user_data="/u")
    assert instance_id(ci, UUID, b"a") != instance_id(ci, UUID.replace("6", "7"), b"a")
    assert instance_id(ci, UUID, b"a") != instance_id(ci, UUID, b"b")

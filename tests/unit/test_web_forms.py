"""The Create VM form's fields become the definition document the API would take."""

from __future__ import annotations

import json

from qumran.web.forms import definition_from_form


def test_kernel_boot_with_devices() -> None:
    doc = definition_from_form(
        {
            "name": " demo ", "memory": "256M", "vcpus": "2", "hypervisor": "qemu",
            "boot": "kernel", "kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0",
            "disks": "/a.qcow2 qcow2\n\n/b.img raw ro\n", "nics": "user\nuser 52:54:00:00:00:01",
            "serial": "on",
        }
    )  # fmt: skip
    assert doc == {
        "name": "demo", "memory": "256M", "vcpus": "2", "hypervisor": "qemu",
        "boot": {"kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0"},
        "serial": True, "graphics": False,
        "disks": [{"path": "/a.qcow2", "format": "qcow2"},
                  {"path": "/b.img", "format": "raw", "readonly": True}],
        "nics": [{"type": "user"}, {"type": "user", "mac": "52:54:00:00:00:01"}],
    }  # fmt: skip


def test_disk_boot_and_empty_fields() -> None:
    doc = definition_from_form({"name": "d", "boot": "disk", "boot_disk": "", "graphics": "on"})
    assert doc["boot"] == {"disk": "0"}
    assert (doc["serial"], doc["graphics"], doc["hypervisor"]) == (False, True, "qemu")
    assert "disks" not in doc and "nics" not in doc


def test_an_empty_kernel_field_is_left_for_validation_to_name() -> None:
    doc = definition_from_form({"name": "k", "boot": "kernel", "kernel": "  "})
    assert doc["boot"] == {"kernel": None}


def test_from_an_image_is_what_qumran_create_defines() -> None:
    from qumran.web.fromimage import definition

    form = {"mode": "image", "name": " web1 ", "memory": "1G", "vcpus": "2", "user": "",
            "ssh_key": "ssh-ed25519 AAAA a@b\n\n  ssh-rsa BBBB c@d \n", "serial": "on"}  # fmt: skip
    assert definition(form, 2222) == {
        "name": "web1", "memory": "1G", "vcpus": "2", "hypervisor": "qemu",
        "boot": {"disk": 0}, "disks": [{"volume": "web1", "pool": "default"}],
        "nics": [{"type": "user", "forward": ["tcp:127.0.0.1:2222-:22"]}],
        "cloud_init": {"users": [{
            "name": "debian", "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"],
        }]},
        "serial": True, "graphics": False,
    }  # fmt: skip


def test_an_image_json_naming_files_outside_its_entry_is_not_offered() -> None:
    from qumran.web.images import _described, _Found

    def entry(**info: object) -> _Found:
        doc = {"name": "x", "disk": "disk.qcow2", "format": "qcow2", "virtual_size": 1 << 30}
        return _Found("x", "/c/x", None, None, json.dumps(doc | info).encode(), 0.0, True)

    good = _described(entry(kernel="vmlinuz", initrd="initrd.img", cmdline="ro"))
    assert good is not None
    assert (good.disk, good.kernel, good.initrd) == ("/c/x/disk.qcow2", "/c/x/vmlinuz",
                                                     "/c/x/initrd.img")  # fmt: skip
    assert _described(entry(kernel="../../../boot/vmlinuz")).kernel is None  # type: ignore[union-attr]
    for bad in ({"disk": "../../etc/shadow"}, {"disk": ".hidden"}, {"name": "y"},
                {"format": "vmdk"}, {"virtual_size": "big"}):  # fmt: skip
        assert _described(entry(**bad)) is None, bad
    assert _described(_Found("x", "/c/x", None, None, b"{not json", 0.0, True)) is None

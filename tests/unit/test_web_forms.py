"""The Create VM form's fields become the definition document the API would take."""

from __future__ import annotations

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

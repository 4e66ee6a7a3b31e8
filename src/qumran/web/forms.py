"""The Create VM form, turned into a definition document for ``Manager.define``.

The form only reshapes what was typed; it checks nothing itself, so every error the
person sees is the daemon's own validation message, word for word as the API gives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qumran.web.images import Image, find, kernel_images

FIELDS = (
    "mode", "name", "memory", "vcpus", "hypervisor", "boot", "image", "kernel", "initrd",
    "cmdline", "boot_disk", "disks", "add_volume", "nics", "serial", "graphics",
)  # fmt: skip
VOLUME = "volume:"  # a disk line naming a volume: volume:NAME or volume:POOL/NAME

DEFAULTS = {
    "memory": "256M", "vcpus": "1", "hypervisor": "qemu", "boot": "kernel",
    "cmdline": "console=ttyS0 quiet panic=-1", "boot_disk": "0", "serial": "on",
}  # fmt: skip


def definition_from_form(form: Mapping[str, str], images: Sequence[Image] = ()) -> dict[str, Any]:
    """A definition document from the custom mode's fields (strings, as the browser sent
    them; the "From an image" mode is :mod:`qumran.web.fromimage`).

    ``boot=image`` boots one of ``images`` (the user's own, as :mod:`qumran.web.images`
    listed them): its kernel and initrd, and its command line unless one was typed.
    """
    if form.get("boot") == "image":
        image = find(kernel_images(list(images)), form.get("image", ""))
        form = {
            **form, "boot": "kernel", "kernel": image.kernel or "", "initrd": image.initrd or "",
            "cmdline": form.get("cmdline", "").strip() or image.cmdline or "",
        }  # fmt: skip
    doc: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "memory": form.get("memory", "").strip(),
        "vcpus": form.get("vcpus", "").strip(),
        "hypervisor": form.get("hypervisor") or "qemu",
        "boot": _boot(form),
        "serial": form.get("serial") == "on",
        "graphics": form.get("graphics") == "on",
    }
    # The volume picker's choice (the browser's script moves it into the disks text).
    picked = form.get("add_volume", "").strip()
    disks = [_disk(line) for line in [*_lines(form.get("disks", "")), *_lines(picked)]]
    nics = [_nic(line) for line in _lines(form.get("nics", ""))]
    if disks:
        doc["disks"] = disks
    if nics:
        doc["nics"] = nics
    return doc


def _boot(form: Mapping[str, str]) -> dict[str, Any]:
    if form.get("boot") == "disk":
        return {"disk": form.get("boot_disk", "0").strip() or "0"}
    boot: dict[str, Any] = {}
    for key in ("kernel", "initrd"):
        value = form.get(key, "").strip()
        if value:  # an empty field is a missing one, so validation names it
            boot[key] = value
    if "kernel" not in boot:
        boot["kernel"] = None
    cmdline = form.get("cmdline", "").strip()
    if cmdline:
        boot["cmdline"] = cmdline
    return boot


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _disk(line: str) -> dict[str, Any]:
    """``PATH [raw|qcow2] [ro]``, or ``volume:[POOL/]NAME [ro]`` (a pool's volume; the
    volume picker writes these lines)."""
    where, *options = line.split()
    disk: dict[str, Any] = {"path": where}
    if where.startswith(VOLUME):
        pool, _, name = where.removeprefix(VOLUME).rpartition("/")
        disk = {"volume": name, "pool": pool or "default"}
    for option in options:
        if option.lower() in ("ro", "readonly"):
            disk["readonly"] = True
        else:
            disk["format"] = option  # an unknown format is reported by validation
    return disk


def _nic(line: str) -> dict[str, Any]:
    """``user`` or ``user MAC`` or just ``MAC``: a user-mode virtio NIC."""
    nic: dict[str, Any] = {}
    for word in line.split():
        if ":" in word:
            nic["mac"] = word
        else:
            nic["type"] = word
    return nic

"""The Create form's "From an image" mode: what ``qumran create NAME --image IMAGE`` does.

1. a qcow2 volume named like the VM in the caller's default pool, an overlay on the
   image's disk (the image itself is never written), of the size asked for;
2. a definition: firmware boot from that volume, a user-mode NIC forwarding a free
   loopback port to the guest's SSH, and a ``cloud_init`` user with the pasted SSH key(s)
   and password-less sudo (the host name defaults to the VM's name);
3. the start (pages.py), unless the box is unticked.

The definition is checked by the daemon's own validation before the volume is made, so a
typo changes nothing; if the definition is refused after that (the name is taken), the
volume is deleted again. The SSH key offered is the person's own public key, read from
their ``~/.ssh`` with their own rights (never root's: ARCHITECTURE.md, "Trust boundaries").
"""

from __future__ import annotations

import contextlib
import pwd
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qumran.config.units import format_size, parse_size
from qumran.config.validate import validate_spec
from qumran.daemon.domain import Domain
from qumran.daemon.manager import Caller, Manager
from qumran.drivers.asuser import effective_uid, read_regular, run_as
from qumran.errors import InvalidArgument, QumranError
from qumran.web.images import Image, disk_images, find

FIELDS = ("disk_image", "disk_size", "user", "ssh_key", "start")
# The same defaults as `qumran create` (src/qumran/cli/create.py).
USER = "debian"  # the login Debian's cloud images use
MEMORY = "1G"
DISK_SIZE = 8 << 30
SUDO = "ALL=(ALL) NOPASSWD:ALL"
POOL = "default"
KEY_NAMES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
MAX_KEY_BYTES = 16 << 10  # a public key is one line of at most a few KB
_KEY = re.compile(r"(ssh|ecdsa|sk)-\S+ [A-Za-z0-9+/]+=*( .*)?")


def defaults(images: Sequence[Image], key: str) -> dict[str, str]:
    """The mode's fields as the form first shows them: the first disk image, its size."""
    found = disk_images(list(images))
    first = found[0] if found else None
    return {
        "disk_image": first.name if first else "",
        "disk_size": format_size(disk_size_for(first)),
        "user": USER,
        "ssh_key": key,
        "start": "on",
    }


def disk_size_for(image: Image | None) -> int:
    """8 GiB, or the image's own size if it is larger (an overlay is never smaller)."""
    return max(DISK_SIZE, image.virtual_size if image else 0)


def definition(form: Mapping[str, str], port: int) -> dict[str, Any]:
    """The definition document of the mode's fields; the volume is named like the VM."""
    name = form.get("name", "").strip()
    keys = [line.strip() for line in form.get("ssh_key", "").splitlines() if line.strip()]
    user = {"name": form.get("user", "").strip() or USER, "ssh_authorized_keys": keys,
            "sudo": SUDO}  # fmt: skip
    return {
        "name": name,
        "memory": form.get("memory", "").strip(),
        "vcpus": form.get("vcpus", "").strip(),
        "hypervisor": "qemu",  # firmware boot from a disk: the QEMU driver's
        "boot": {"disk": 0},
        "disks": [{"volume": name, "pool": POOL}],
        "nics": [{"type": "user", "forward": [f"tcp:127.0.0.1:{port}-:22"]}],
        "cloud_init": {"users": [user]},
        "serial": form.get("serial") == "on",
        "graphics": form.get("graphics") == "on",
    }


def disk_size(form: Mapping[str, str]) -> int:
    text = form.get("disk_size", "").strip()
    if not text:
        raise InvalidArgument("disk size: give the VM's disk size, such as 8G")
    try:
        return parse_size(text, "G")
    except ValueError as exc:
        raise InvalidArgument(f"disk size: {exc}") from None


async def create(manager: Manager, caller: Caller, form: Mapping[str, str],
                 images: Sequence[Image]) -> Domain:  # fmt: skip
    """The volume, then the definition; the volume is deleted again if that is refused."""
    image = find(disk_images(list(images)), form.get("disk_image", ""), "disk image")
    size = disk_size(form)
    if not form.get("ssh_key", "").strip():
        raise InvalidArgument(
            "SSH key: paste your SSH public key (the line in ~/.ssh/id_ed25519.pub; make one "
            "with `ssh-keygen -t ed25519`): without one nobody can log in to the guest"
        )
    doc = definition(form, free_port())
    validate_spec(doc)  # the daemon's own checks first: a typo makes no volume
    assert image.disk is not None  # disk_images() keeps only these
    await manager.storage.create_volume(caller, doc["name"], size, pool=POOL, format="qcow2",
                                        backing=image.disk)  # fmt: skip
    try:
        return await manager.define(caller, doc)
    except BaseException:
        with contextlib.suppress(QumranError):
            await manager.storage.delete_volume(caller, doc["name"], pool=POOL)
        raise


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_forward(nics: Sequence[Any]) -> int | None:
    """The host port forwarded to the guest's SSH (TCP 22) by one of ``nics``, if any."""
    for nic in nics:
        for forward in nic.forwards:
            if forward.proto == "tcp" and forward.guest_port == 22:
                return int(forward.host_port)
    return None


def public_key(uid: int, gid: int) -> str:
    """The person's own SSH public key line (the first of ~/.ssh/id_ed25519.pub,
    id_ecdsa.pub, id_rsa.pub), read with their rights; "" if they have none."""
    try:
        home = pwd.getpwuid(effective_uid(uid)).pw_dir
    except KeyError:
        return ""
    if not home.startswith("/"):
        return ""
    ssh = Path(home) / ".ssh"
    for name in KEY_NAMES:
        path = ssh / name
        raw = run_as(uid, gid, lambda: _read_key(path))  # noqa: B023 (called at once)
        if raw is None:
            continue
        lines = raw.decode("utf-8", "replace").strip().splitlines()
        if lines and _KEY.fullmatch(lines[0]):
            return lines[0]
    return ""


def _read_key(path: Path) -> bytes | None:
    """Runs with the person's rights: a small regular file's bytes, or None."""
    data = read_regular(path, MAX_KEY_BYTES)
    return data if isinstance(data, bytes) and len(data) <= MAX_KEY_BYTES else None

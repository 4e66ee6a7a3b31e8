"""The cloud-init seed of a VM, built by the daemon at each start.

The seed's bytes come from the definition (:mod:`qumran.images.cloudinit`) and, when the
section names a ``user_data`` file, from that file, which is the owner's: it is read with
the owner's rights (:mod:`qumran.drivers.asuser`), never root's, and a file that is
missing and one the owner may not read get the same answer (drivers/checks.py). The
daemon writes the image into the VM's run directory and hands QEMU an fd to it
(:class:`qumran.drivers.rundir.Handoff`), so root never follows a path of the user's.
"""

from __future__ import annotations

from pathlib import Path

from qumran.config.spec import VmSpec
from qumran.drivers.asuser import effective_uid, read_regular, run_as
from qumran.drivers.base import Owner
from qumran.drivers.checks import refused_open
from qumran.errors import InvalidArgument
from qumran.images.cloudinit import MAX_USER_DATA, HostKey, build_seed

FIELD = "cloud_init.user_data"


def seed_for(
    spec: VmSpec, vm_uuid: str, owner: Owner, host_key: HostKey | None = None
) -> bytes | None:
    """The seed image for ``spec`` (None when it has no ``cloud_init`` section)."""
    section = spec.cloud_init
    if section is None:
        return None
    user_data = None if section.user_data is None else read_user_data(section.user_data, owner)
    return build_seed(section, spec.name, vm_uuid, user_data, host_key)


def check_seed(spec: VmSpec, owner: Owner) -> None:
    """At define and start: the ``user_data`` file is there for the owner to read."""
    if spec.cloud_init is not None and spec.cloud_init.user_data is not None:
        read_user_data(spec.cloud_init.user_data, owner)


def read_user_data(path: Path, owner: Owner) -> bytes:
    """The bytes of the owner's ``user_data`` file, read with the owner's rights."""
    result = run_as(owner.uid, owner.gid, lambda: read_regular(path, MAX_USER_DATA))
    uid = effective_uid(owner.uid)
    shown = str(path) if str(path).isprintable() else repr(str(path))
    where = f"{FIELD}: {shown}"
    if isinstance(result, OSError):
        raise refused_open(where, result, uid)
    if result is None:
        raise InvalidArgument(f"{where} is not a regular file")
    if len(result) > MAX_USER_DATA:
        raise InvalidArgument(f"{where} is larger than {MAX_USER_DATA >> 20} MiB")
    return result

"""NoCloud seeds: a definition's ``cloud_init:`` section as the ISO image cloud-init reads.

cloud-init's NoCloud datasource looks on every block device for a file system labelled
``cidata`` and reads three files from it: ``meta-data`` (the instance id and host name),
``user-data`` (``#cloud-config`` YAML, or anything else cloud-init takes, such as a
script) and, optionally, ``network-config``. The image is ISO 9660 with Rock Ridge and
Joliet, so the names keep their dashes and lower case whichever extension a guest reads.

Pure: bytes in, bytes out, no file system touched. qumrand builds a seed at each start
(:mod:`qumran.drivers.seed`); the native VMM can attach the same bytes.

The instance id is a digest of the VM's uuid and of the section itself (and of the
user-data file's bytes, when there is one): the same at every boot of an unchanged
definition, so a reboot or a restart does not run cloud-init's per-instance modules again
(new SSH host keys, users), and new as soon as the section changes, so the guest applies
the changed section at its next boot.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.config.cloudinit import CloudInit, hostname_for, is_crypt_hash

LABEL = "cidata"
MAX_USER_DATA = 1 << 20  # bytes of a user-data file; cloud vendors take 16-64 KiB
ID_PREFIX = "qumran-"

# ISO 9660 (level 1) name, Rock Ridge and Joliet name of each file.
_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETWORKC.;1",
}


@dataclass(frozen=True)
class SeedFiles:
    """The files of one seed, before they become an image."""

    instance_id: str
    meta_data: bytes
    user_data: bytes
    network_config: bytes | None

    def files(self) -> dict[str, bytes]:
        files = {"meta-data": self.meta_data, "user-data": self.user_data}
        if self.network_config is not None:
            files["network-config"] = self.network_config
        return files


def instance_id(section: CloudInit, vm_uuid: str, user_data: bytes | None = None) -> str:
    """``qumran-`` and 32 hex digits: a digest of the VM, the section and the file."""
    digest = hashlib.sha256()
    for part in (vm_uuid.encode(), canonical(section), user_data or b""):
        # Each part length-prefixed, so no two different triples hash the same bytes.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return ID_PREFIX + digest.hexdigest()[:32]


def canonical(section: CloudInit) -> bytes:
    """The section as JSON with sorted keys: the same bytes for the same section."""
    doc = section.model_dump(mode="json")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class HostKey:
    """A VM's SSH host key pair (ed25519, OpenSSH formats), made by qumrand before the
    first boot so that clients know the guest's key before they ever connect."""

    private: str
    public: str  # "ssh-ed25519 AAAA..."


def generate_host_key() -> HostKey | None:
    """A new ed25519 key pair from ``ssh-keygen``; None when it is not installed (then the
    guest makes its own keys and clients learn them from its console)."""
    binary = shutil.which("ssh-keygen")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="qumran-hostkey-") as tmp:
        key = Path(tmp) / "key"
        subprocess.run([binary, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
        public = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        return HostKey(key.read_text(), public)


def cloud_config(section: CloudInit, host_key: HostKey | None = None) -> dict[str, Any]:
    """The ``#cloud-config`` document the section stands for (without user_data)."""
    config: dict[str, Any] = {}
    if section.users:
        config["users"] = [_user(user) for user in section.users]
    # Password login over SSH only for a user who was given a password; keys otherwise.
    config["ssh_pwauth"] = any(user.password is not None for user in section.users)
    if section.packages:
        config["packages"] = list(section.packages)
    if section.runcmd:
        config["runcmd"] = list(section.runcmd)
    if host_key is not None:
        # The guest's host key is the one qumrand made and clients already trust; no
        # other type is generated, so no client is offered a key it cannot check.
        # cloud-init writes the public key file as given: with its newline, or the
        # console's key block runs the key and its END line together.
        config["ssh_keys"] = {"ed25519_private": host_key.private,
                              "ed25519_public": host_key.public + "\n"}  # fmt: skip
        config["ssh_genkeytypes"] = []
    # Nothing about ssh.emit_keys_to_console or final_message: cloud-init's defaults
    # print the host keys and "Cloud-init v. ... finished at" on the console, which is
    # what `qumran ssh` and `qumran create --wait` read (docs/definitions.md).
    return config


def _user(user: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": user.name}
    if user.ssh_authorized_keys:
        entry["ssh_authorized_keys"] = list(user.ssh_authorized_keys)
    if user.password is None:
        entry["lock_passwd"] = True
    else:
        # A crypt(3) hash goes in as a hash; anything else is the password itself, which
        # cloud-init hashes in the guest (chpasswd).
        key = "hashed_passwd" if is_crypt_hash(user.password) else "plain_text_passwd"
        entry[key] = user.password
        entry["lock_passwd"] = False
    if user.sudo is not None:
        entry["sudo"] = user.sudo
    if user.shell is not None:
        entry["shell"] = user.shell
    return entry


def _yaml(doc: dict[str, Any]) -> str:
    import yaml  # here: qumrand imports this module at start, and writes a seed rarely

    # A wide line: a key line stays on one line, as in an authorized_keys file.
    return yaml.safe_dump(
        doc, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 16
    )


def seed_files(
    section: CloudInit,
    vm_name: str,
    vm_uuid: str,
    user_data: bytes | None = None,
    host_key: HostKey | None = None,
) -> SeedFiles:
    """The three files of the seed for VM ``vm_name``. ``user_data``: the bytes of the
    section's ``user_data`` file (read by the caller with the owner's rights), used as
    they are instead of the generated user-data."""
    if user_data is not None and len(user_data) > MAX_USER_DATA:
        raise ValueError(f"the user-data file is larger than {MAX_USER_DATA >> 20} MiB")
    iid = instance_id(section, vm_uuid, user_data)
    hostname = section.hostname or hostname_for(vm_name)
    meta = _yaml({"instance-id": iid, "local-hostname": hostname}).encode()
    if user_data is None:
        user_data = ("#cloud-config\n" + _yaml(cloud_config(section, host_key))).encode()
    network = None
    if section.network_config is not None:
        network = _yaml(section.network_config).encode()
    return SeedFiles(iid, meta, user_data, network)


def build_iso(files: SeedFiles) -> bytes:
    """The ISO 9660 image (label ``cidata``, Rock Ridge and Joliet) holding ``files``."""
    import pycdlib  # here: qumrand loads it at the first seed, not at start (2 MB)

    iso = pycdlib.PyCdlib()
    iso.new(vol_ident=LABEL, joliet=3, rock_ridge="1.09", app_ident_str="qumran")
    try:
        for name, data in files.files().items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                _NAMES[name],
                rr_name=name,
                joliet_path=f"/{name}",
                file_mode=0o100444,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def build_seed(
    section: CloudInit,
    vm_name: str,
    vm_uuid: str,
    user_data: bytes | None = None,
    host_key: HostKey | None = None,
) -> bytes:
    """The NoCloud seed image for a VM: :func:`seed_files` made into :func:`build_iso`.
    ``host_key`` goes into generated user-data only (a user's own file is theirs)."""
    return build_iso(seed_files(section, vm_name, vm_uuid, user_data, host_key))

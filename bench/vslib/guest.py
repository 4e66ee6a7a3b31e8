"""What both stacks of ``bench/vs_create.py`` give the guest, and what they read back.

Pure helpers: the cloud-init seed's files (the same user-data Qumran's ``qumran create``
writes for ``--ssh-key``: ``qumran.images.cloudinit.cloud_config``), the console lines
that mark a boot's phases, and the progress lines of ``qumran create``.
"""

from __future__ import annotations

import re
import socket

from qumran.images.cloudinit import HostKey

# cloud-init's final stage prints this on the console when it is done with a boot (the
# line `qumran create --wait` waits for).
CLOUD_INIT_DONE = re.compile(rb"Cloud-init v\. \S+ finished at")
GUEST_USER = "debian"
SUDO = "ALL=(ALL) NOPASSWD:ALL"


def user_data(key_line: str, user: str = GUEST_USER, host_key: HostKey | None = None) -> str:
    """``#cloud-config`` for one user with ``key_line`` and password-less sudo, password
    login locked, and the guest's SSH host key made beforehand (``host_key``): the document
    qumrand writes for ``qumran create --ssh-key`` (its cloud_config of the section create
    makes, with the key qumrand made for the VM), key for key."""
    key_line = key_line.strip()
    if "\n" in key_line or not key_line:
        raise ValueError("an SSH public key is one non-empty line")
    return (
        "#cloud-config\n"
        "users:\n"
        f"- name: {user}\n"
        "  ssh_authorized_keys:\n"
        f"  - {key_line}\n"
        "  lock_passwd: true\n"
        f"  sudo: {SUDO}\n"
        "ssh_pwauth: false\n"
    ) + (_host_key(host_key) if host_key is not None else "")


def _host_key(key: HostKey) -> str:
    private = "".join(f"    {line}\n" for line in key.private.splitlines())
    return (
        "ssh_keys:\n"
        "  ed25519_private: |\n"
        f"{private}"
        f'  ed25519_public: "{key.public}\\n"\n'
        "ssh_genkeytypes: []\n"
    )


def meta_data(instance_id: str, hostname: str) -> str:
    """NoCloud meta-data: the instance id and the host name (as qumrand writes it)."""
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


# `qumran create` prints one line per step (qumran.cli.create); the phase each starts.
CREATE_STEPS = (
    (re.compile(r"^SSH key: "), "key"),
    (re.compile(r"^disk: volume "), "disk"),
    (re.compile(r"^VM \S+ defined"), "defined"),
    (re.compile(r"^VM \S+ started \(pid (\d+)\)"), "started"),
    (re.compile(r"^waiting for cloud-init"), "waiting"),
    (re.compile(r"^\S+ is ready after "), "ready"),
)


def create_step(line: str) -> tuple[str, int | None] | None:
    """The phase a line of ``qumran create``'s output marks, and the VM's pid if it says
    one; None for any other line."""
    for pattern, phase in CREATE_STEPS:
        match = pattern.match(line)
        if match:
            return phase, int(match.group(1)) if match.groups() else None
    return None


FORWARD = re.compile(r"SSH forwarded from 127\.0\.0\.1:(\d+)")


def forwarded_port(line: str) -> int | None:
    """The loopback port `qumran create` says it forwards to the guest's SSH, if it does."""
    match = FORWARD.search(line)
    return int(match.group(1)) if match else None


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick, as qumran create's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""libvirt's own clients against a test's qumrand: Debian's virsh (and the URI that
python3-libvirt takes), on the daemon's libvirt-sock."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

from daemon_harness import Daemon

XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>/bin/sh</kernel><cmdline>console=ttyS0</cmdline></os>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def uri(daemon: Daemon) -> str:
    return f"qemu+unix:///system?socket={daemon.root / 'libvirt-sock'}"


def client_env() -> dict[str, str]:
    """A plain environment for a client, with any LIBVIRT_* settings of the test's own
    (``LIBVIRT_DEBUG=1 LIBVIRT_LOG_OUTPUTS=1:file:/tmp/virsh.log`` to see the wire)."""
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LC_ALL": "C"}
    return env | {k: v for k, v in os.environ.items() if k.startswith("LIBVIRT_")}


def virsh(
    daemon: Daemon, *args: str, user: pwd.struct_passwd | None = None
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(["virsh", "-c", uri(daemon), *args], capture_output=True, text=True,
                          env=client_env(), timeout=60, **kwargs)  # fmt: skip


def ok(daemon: Daemon, *args: str) -> str:
    proc = virsh(daemon, *args)
    assert proc.returncode == 0, f"virsh {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def define(daemon: Daemon, tmp: Path, name: str = "web1", xml: str = XML) -> Path:
    path = tmp / f"{name}.xml"
    path.write_text(xml.format(name=name))
    path.chmod(0o644)
    assert f"Domain '{name}' defined" in ok(daemon, "define", str(path))
    return path


def state(daemon: Daemon, name: str) -> str:
    return ok(daemon, "domstate", "--reason", name).strip()

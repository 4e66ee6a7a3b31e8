"""A VM's SSH host keys, kept for `qumran ssh` in a known_hosts file of Qumran's own.

Where they come from: for a VM with a ``cloud_init`` section, qumrand makes the guest's
host key before its first boot and hands it over in the seed, so the key is known before
anyone connects (the API's ``ssh_host_keys``). Otherwise (a user's own user-data): on a
VM's first boot cloud-init makes its SSH host keys and prints their public halves on
the console between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END ...-----``. The
console is a channel the guest cannot be impersonated on (qumrand serves it only to the
VM's owner), so what it printed there is what ``ssh`` checks the guest against — never a
key accepted blindly on first connection. The keys go into a known_hosts file of
Qumran's own (``~/.local/share/qumran/known_hosts``), under an alias per VM that includes
its uuid: a new VM that reuses a name does not inherit the old one's keys.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

BEGIN = b"-----BEGIN SSH HOST KEY KEYS-----"
END = b"-----END SSH HOST KEY KEYS-----"
# A public key line: its type and base64 body (the comment, root@host, is dropped).
_KEY = re.compile(rb"^\s*((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+)\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)")


def from_console(output: bytes) -> list[str]:
    """The host keys in the last complete block ``output`` holds, as ``type base64``."""
    end = output.rfind(END)
    begin = output.rfind(BEGIN, 0, end) if end >= 0 else -1
    if begin < 0:
        return []
    keys = []
    for line in output[begin + len(BEGIN) : end].replace(b"\r", b"").split(b"\n"):
        match = _KEY.match(line)
        if match:
            keys.append(f"{match[1].decode()} {match[2].decode()}")
    return keys


def alias(name: str, uuid: str) -> str:
    """The name ssh checks keys under (``HostKeyAlias``): one per VM, never reused."""
    return f"qumran-{name}-{uuid[:8]}"


def known_hosts_file() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "qumran" / "known_hosts"


def known(host: str, path: Path | None = None) -> bool:
    return bool(keys_of(host, path))


def keys_of(host: str, path: Path | None = None) -> list[str]:
    """The keys recorded for ``host``, as ``type base64``."""
    found = (line.split(" ", 1) for line in _lines(path or known_hosts_file()))
    return [rest for name, rest in (f for f in found if len(f) == 2) if name == host]


def save(host: str, keys: list[str], path: Path | None = None) -> Path:
    """Record ``keys`` for ``host`` in place of what it had; other hosts' lines stay."""
    path = path or known_hosts_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    kept = [line for line in _lines(path) if line.split(" ", 1)[0] != host]
    text = "".join(f"{line}\n" for line in [*kept, *(f"{host} {key}" for key in keys)])
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # whole or not at all: a concurrent ssh never reads half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

"""Snapshot files made by hand, as a user could make them: what qumrand reads of a save
before anything runs (the header and the machine state, checked), with RAM all holes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qumran.vmm.snapshot.file import HEADER, RAM_ALIGN, _pack_header


def tiny_snapshot(path: Path, name: str, memory_mib: int = 64, vcpus: int = 1) -> None:
    """A well-formed snapshot of VM ``name``: whatever a restore refuses of it, it refuses
    for what it says, not for its form."""
    size = memory_mib << 20
    machine = {"name": name, "memory": size, "vcpus": vcpus, "kernel": "/bin/sh"}
    state = {"machine": machine, "memory": {"size": size, "extents": []}}
    body = json.dumps(state).encode()
    mem_offset = -(-(HEADER.size + len(body)) // RAM_ALIGN) * RAM_ALIGN
    unsigned = _pack_header(len(body), mem_offset, size, bytes(32), bytes(32))
    digest = hashlib.sha256(unsigned + body).digest()
    header = _pack_header(len(body), mem_offset, size, digest, hashlib.sha256().digest())
    with open(path, "wb") as f:
        f.write(header + body)
        f.truncate(mem_offset + size)

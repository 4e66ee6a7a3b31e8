"""Each cloud-init VM's SSH host key: made once by qumrand, kept in its store, given to the
guest in its seed, its public half shown by the API (docs/guests.md)."""

from __future__ import annotations

import asyncio

from qumran.config.spec import VmSpec
from qumran.daemon.domain import Domain
from qumran.daemon.store import Store
from qumran.images.cloudinit import HostKey, generate_host_key


def wanted(spec: VmSpec) -> bool:
    """A seed whose user-data qumrand writes carries the host key; a user's own does not."""
    return spec.cloud_init is not None and spec.cloud_init.user_data is None


async def make(spec: VmSpec) -> HostKey | None:
    """A new key for a VM being defined with ``spec`` (None if it wants none)."""
    return await asyncio.to_thread(generate_host_key) if wanted(spec) else None


async def of(store: Store, dom: Domain) -> HostKey | None:
    """The key the VM's seed gives the guest: the stored one, or (a VM that gained a
    cloud_init section after define) one made and stored now."""
    if not wanted(dom.spec):
        return None
    found = store.host_key(dom.uuid)
    if found is None:
        key = await make(dom.spec)
        if key is None:
            return None
        store.set_host_key(dom.uuid, key.private, key.public)
        found = (key.private, key.public)
    dom.ssh_host_key = found[1]
    return HostKey(*found)

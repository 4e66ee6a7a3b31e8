"""Storage pools and volumes (libvirt's storage driver role), in qumrand.

- :mod:`.pools`: the registry of each owner's pool directories (in the store);
- :mod:`.volumes`: a pool's files, made and changed with crash-safe temporary names;
- :mod:`.qemuimg`, :mod:`.asowner`, :mod:`.fsops`: qemu-img and file calls, always run
  with the pool owner's rights;
- :mod:`.resolve`: a definition's ``disks: [{volume: ...}]`` turned into paths;
- :mod:`.service`: :class:`Storage`, the facade the API and the web manager call.

docs/storage.md describes it for users.
"""

from qumran.daemon.storage.service import Storage

__all__ = ["Storage"]

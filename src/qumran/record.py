"""Value records: compared, hashed and shown by their fields, as frozen dataclasses are,
without importing :mod:`dataclasses`.

``dataclasses`` pulls in ``inspect`` and ``ast`` (with ``dis``, ``tokenize``...): over 1 MiB
of resident memory in every VM process with a virtio device, for a few classes whose
``__init__`` is a handful of lines. A subclass lists its fields once, in ``__slots__`` (also
its ``__match_args__``), and assigns them in its own ``__init__``, as ``Final`` attributes:
the type checker keeps them read-only, as ``frozen=True`` did at run time.

Shared by the layers that keep their imports lean: the VMM's device specs and the KVM
layer's vCPU exits (``qumran.kvm.exits``).
"""

from __future__ import annotations


class Record:
    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({args})"

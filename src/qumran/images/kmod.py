"""Kernel modules taken from an unpacked Debian kernel package.

Debian ships no ``modules.dep`` in ``linux-image-*`` packages (``depmod`` writes it at
install time), so dependencies are read from each module's ``.modinfo`` ELF section: a run
of NUL-terminated ``key=value`` strings whose ``depends=`` lists the modules to load first
(``include/linux/module.h``, ``scripts/mod/modpost.c``). The result is a load order for
``insmod``, so the guest needs neither ``modprobe`` nor ``depmod``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qumran.images.errors import ModuleError

# ELF64 header offsets (System V gABI, "ELF Header"): e_shoff, e_shentsize/e_shnum/e_shstrndx.
_ELF_MAGIC = b"\x7fELF"
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr: name type flags addr offset size ...


@dataclass(frozen=True)
class Module:
    name: str  # canonical name, dashes folded to underscores as the kernel does
    path: Path
    depends: tuple[str, ...]


def canonical(name: str) -> str:
    """The kernel treats ``-`` and ``_`` in module names as the same character."""
    return name.removesuffix(".ko").replace("-", "_")


def modinfo(image: bytes) -> dict[str, str]:
    """The ``.modinfo`` strings of an ELF64 little-endian module, as a dict."""
    if image[:4] != _ELF_MAGIC or image[4] != 2 or image[5] != 1:
        raise ModuleError("not a little-endian ELF64 kernel module")
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    sections = [_SHDR.unpack_from(image, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]
    for sh in sections:
        end = image.index(b"\0", strtab_off + sh[0])
        if image[strtab_off + sh[0] : end] == b".modinfo":
            raw = image[sh[4] : sh[4] + sh[5]]
            pairs = (s.decode(errors="replace").partition("=") for s in raw.split(b"\0") if s)
            return {key: value for key, _, value in pairs}
    raise ModuleError("module has no .modinfo section")


class ModuleTree:
    """The ``lib/modules/<version>/`` tree of an unpacked kernel package."""

    def __init__(self, package_root: Path) -> None:
        bases = sorted((package_root / "lib" / "modules").glob("*/kernel"))
        if not bases:
            raise ModuleError(f"no lib/modules/<version>/kernel in {package_root}")
        self.base = bases[-1].parent
        self.version = self.base.name
        self._paths = {canonical(p.name): p for p in self.base.rglob("*.ko")}
        self._builtin = self._read_builtin()

    def _read_builtin(self) -> set[str]:
        listing = self.base / "modules.builtin"
        if not listing.exists():
            return set()
        return {canonical(Path(line).name) for line in listing.read_text().split()}

    def is_builtin(self, name: str) -> bool:
        return canonical(name) in self._builtin

    def module(self, name: str) -> Module:
        key = canonical(name)
        path = self._paths.get(key)
        if path is None:
            raise ModuleError(f"kernel {self.version} has no module {name}")
        info = modinfo(path.read_bytes())
        deps = tuple(canonical(d) for d in info.get("depends", "").split(",") if d)
        return Module(key, path, deps)

    def load_order(self, names: Iterable[str]) -> list[Module]:
        """``names`` and everything they depend on, each after its dependencies.

        Built-in drivers are skipped: they need no loading.
        """
        order: dict[str, Module] = {}
        visiting: set[str] = set()

        def visit(name: str) -> None:
            key = canonical(name)
            if key in order or self.is_builtin(key):
                return
            if key in visiting:
                raise ModuleError(f"module dependency cycle through {key}")
            visiting.add(key)
            mod = self.module(key)
            for dep in mod.depends:
                visit(dep)
            visiting.discard(key)
            order[key] = mod

        for name in names:
            visit(name)
        return list(order.values())

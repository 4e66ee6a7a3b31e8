"""Debian packages as a source of guest artifacts, without installing anything.

Packages are fetched with ``apt-get download`` into a cache directory and unpacked there
with ``dpkg-deb -x``. Once a package is in the cache it is never fetched again, so image
builds work offline after the first run. Neither step needs root.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from qumran.images.errors import PackageError

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/qumran`` (``~/.cache/qumran`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qumran"


class DebCache:
    """A directory of downloaded ``.deb`` files and their unpacked trees.

    Layout: ``<root>/<package>_<version>_<arch>.deb`` as apt names them, and
    ``<root>/<package>/`` for the unpacked tree. A package whose tree exists is used as is.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_cache_root() / "debs"
        self._updated = False

    def deb(self, package: str) -> Path:
        """Return the cached ``.deb`` of ``package``, downloading it if needed."""
        found = self._cached_deb(package)
        if found is not None:
            return found
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PackageError(f"cannot create the package cache {self.root}: {exc}") from exc
        if not self._download(package):
            # An unknown package usually means the apt lists are stale or absent.
            self._apt_update()
            if not self._download(package):
                raise PackageError(f"apt-get download {package} failed; is it a Debian package?")
        found = self._cached_deb(package)
        if found is None:
            raise PackageError(f"apt-get download {package} left no .deb in {self.root}")
        return found

    def unpack(self, package: str) -> Path:
        """Return the unpacked tree of ``package`` (``dpkg-deb -x``), unpacking if needed."""
        tree = self.root / package
        if tree.is_dir():
            return tree
        deb = self.deb(package)
        staging = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=self.root))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"unpacking {deb.name}")
            staging.rename(tree)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not tree.is_dir():  # else another builder unpacked it first: use theirs
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return tree

    def depends(self, package: str) -> list[str]:
        """The package names in the ``Depends`` field of ``package`` (first alternative)."""
        out = _run(["dpkg-deb", "-f", str(self.deb(package)), "Depends"], f"reading {package}")
        return parse_depends(out)

    def resolve_kernel(self, metapackage: str) -> str:
        """The real kernel package a metapackage such as ``linux-image-cloud-amd64`` pulls in."""
        for name in self.depends(metapackage):
            if re.fullmatch(r"linux-image-\d+\.\d+\.\d+-\d+-.+", name):
                return name
        raise PackageError(f"{metapackage} depends on no linux-image-<version> package")

    def _cached_deb(self, package: str) -> Path | None:
        if not self.root.is_dir():
            return None
        matches = sorted(self.root.glob(f"{glob_escape(package)}_*.deb"))
        return matches[-1] if matches else None

    def _download(self, package: str) -> bool:
        log.info("downloading %s into %s", package, self.root)
        proc = subprocess.run(
            ["apt-get", "download", package],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            log.debug("apt-get download %s: %s", package, proc.stderr.strip())
        return proc.returncode == 0

    def _apt_update(self) -> None:
        if self._updated:
            return
        self._updated = True
        log.info("running apt-get update")
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)


def parse_depends(field: str) -> list[str]:
    """Package names of a Debian ``Depends`` field, taking the first of each alternative."""
    names = []
    for clause in field.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (package names may contain ``+``, never ``*``, but be safe)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise PackageError(f"{what}: {argv[0]} is not installed") from exc
    if proc.returncode != 0:
        raise PackageError(f"{what}: {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout

"""The image cache: one directory per image under ``~/.cache/qumran/images/``.

Layout of an entry ``<root>/<name>/``:

- ``image.json`` — what it is (:class:`ImageInfo`): its disk's file and format, the digest
  of the recipe it was built from (or of the imported file), when, and for built images the
  kernel, initrd and command line for direct kernel boot;
- the disk (``disk.qcow2`` or ``disk.raw``), and ``vmlinuz`` / ``initrd.img`` when built.

A directory without ``image.json`` is not an image entry (the demo guest's kernel and
initramfs live in ``images/demo/``) and is never listed, replaced or removed here.

Nothing is ever half-written: work happens in ``<root>/.staging-<name>-*`` (same file
system) and :meth:`ImageStore.staging` renames it into place at the end. An interrupted
build (Ctrl-C, an error) removes its staging directory; one left by a killed process is
removed by the next build of the same name, which holds that name's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from qumran.images.debian import default_cache_root
from qumran.images.errors import BadImageName, ImageError, ImageNotFound

INFO_FILE = "image.json"
INFO_VERSION = 1
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


@dataclass(frozen=True)
class ImageInfo:
    """An entry's ``image.json``. Paths in it are file names inside the entry."""

    name: str
    disk: str
    format: str
    digest: str
    created: str
    source: str  # "built" or "imported"
    virtual_size: int
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    recipe: dict[str, object] = field(default_factory=dict)
    version: int = INFO_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ImageInfo:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            known = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise ImageError(
                f"{where} is not a valid image description ({exc}): "
                f"remove that image with `qumran image rm`"
            ) from exc


@dataclass(frozen=True)
class Image:
    """A cached image: its directory and what ``image.json`` says about it."""

    path: Path
    info: ImageInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def disk(self) -> Path:
        return self.path / self.info.disk

    @property
    def kernel(self) -> Path | None:
        return self.path / self.info.kernel if self.info.kernel else None

    @property
    def initrd(self) -> Path | None:
        return self.path / self.info.initrd if self.info.initrd else None

    def size(self) -> int:
        """Bytes the entry takes on disk (its files' allocated blocks)."""
        total = 0
        for child in self.path.iterdir():
            with contextlib.suppress(OSError):
                total += child.lstat().st_blocks * 512
        return total

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "disk": str(self.disk),
            "format": self.info.format,
            "size": self.size(),
            "virtual_size": self.info.virtual_size,
            "digest": self.info.digest,
            "created": self.info.created,
            "source": self.info.source,
            "kernel": str(self.kernel) if self.kernel else None,
            "initrd": str(self.initrd) if self.initrd else None,
            "cmdline": self.info.cmdline,
        }


def check_name(name: str) -> str:
    """``name`` if it can be an entry's directory name, else :class:`BadImageName`."""
    if not NAME_PATTERN.fullmatch(name):
        raise BadImageName(
            f"bad image name {name!r}: use 1 to 63 lower-case letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return name


def default_root() -> Path:
    return default_cache_root() / "images"


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class ImageStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root if root is not None else default_root()).absolute()

    def list(self) -> list[Image]:
        """Every image entry, by name. Entries with a broken ``image.json`` are skipped."""
        if not self.root.is_dir():
            return []
        images = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not (child / INFO_FILE).is_file():
                continue
            with contextlib.suppress(ImageError, OSError):
                images.append(self._load(child))
        return images

    def find(self, name: str) -> Image | None:
        path = self.root / check_name(name)
        if not (path / INFO_FILE).is_file():
            return None
        return self._load(path)

    def get(self, name: str) -> Image:
        image = self.find(name)
        if image is None:
            raise ImageNotFound(f"no image named {name!r} in {self.root} (see `qumran image list`)")
        return image

    def remove(self, name: str) -> Image:
        """Remove an entry (renamed aside first, so a reader never sees half of one)."""
        with self._lock(name):
            image = self.get(name)
            aside = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{name}-", dir=self.root))
            image.path.rename(aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)
            return image

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Staging]:
        """A directory to build ``name`` in; :meth:`Staging.commit` puts it in place.

        Holds ``name``'s lock throughout: two builds of one name do not interleave. Left
        without a commit (an error, Ctrl-C), the directory is removed.
        """
        check_name(name)
        target = self.root / name
        if target.exists() and not (target / INFO_FILE).is_file():
            raise ImageError(
                f"{target} exists and is not an image entry (no {INFO_FILE}): choose another name"
            )
        with self._lock(name):
            self._clean_leftovers(name)
            work = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=self.root))
            staging = Staging(work, target)
            try:
                yield staging
            finally:
                if work.exists():
                    remove_tree(work)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f".lock-{name}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ImageError(f"cannot use the image cache {self.root}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _clean_leftovers(self, name: str) -> None:
        """Remove staging and set-aside directories a killed process left for ``name``."""
        for prefix in (STAGING_PREFIX, OLD_PREFIX):
            for child in self.root.glob(f"{prefix}{name}-*"):
                remove_tree(child)

    def _load(self, path: Path) -> Image:
        info_path = path / INFO_FILE
        try:
            text = info_path.read_text()
        except OSError as exc:
            raise ImageError(f"cannot read {info_path}: {exc.strerror}") from exc
        info = ImageInfo.from_json(text, info_path)
        if info.name != path.name:
            raise ImageError(f"{info_path} names {info.name!r}, not {path.name!r}")
        return Image(path, info)


class Staging:
    """A staging directory and the entry it becomes."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path = path
        self.target = target

    def commit(self, info: ImageInfo) -> Image:
        """Write ``image.json`` last, then swap the directory into place."""
        for member in (info.disk, info.kernel, info.initrd):
            if member and not (self.path / member).is_file():
                raise ImageError(f"internal: {member} missing from {self.path}")
        tmp = self.path / f".{INFO_FILE}.tmp"
        tmp.write_text(info.to_json())
        tmp.rename(self.path / INFO_FILE)
        self.path.chmod(0o755)  # mkdtemp's 0700: readable like any cache entry
        aside: Path | None = None
        if self.target.exists():
            aside = Path(
                tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{self.target.name}-", dir=self.target.parent)
            )
            self.target.rename(aside / "entry")
        self.path.rename(self.target)
        if aside is not None:
            remove_tree(aside)
        return Image(self.target, info)


def remove_tree(path: Path) -> None:
    """Remove ``path``; as a normal user, what subordinate uids own goes from a namespace.

    A build killed with -9 as a normal user can leave files owned by its /etc/subuid range
    (the unpacked tree): only "root" in a user namespace with that range may remove them.
    """
    shutil.rmtree(path, ignore_errors=True)
    if path.exists() and os.geteuid() != 0:
        from qumran.images import userns

        with contextlib.suppress(OSError, ImageError):
            argv = [*userns.helper(), "rm", "-rf", "--", str(path)]
            subprocess.run(argv, capture_output=True, check=False)

"""qemu-img, run as a pool's owner: volumes made, copied, grown and inspected.

Every call names the formats (``-f``, ``-O``, ``-F``) instead of letting qemu-img probe
them, except :func:`info`, which is how a format is learnt. Plain ``info`` reads the
file's own header: it names a qcow2's backing file without opening it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qumran.daemon.storage.asowner import StorageError, run
from qumran.drivers.base import Owner
from qumran.errors import InvalidArgument

FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    capacity: int  # the virtual size, bytes
    backing: str | None  # the backing file as recorded (absolute for what qumrand makes)
    backing_format: str | None
    data_file: str | None


def _message(err: str, out: str) -> str:
    """qemu-img's complaint in one line, without its ``qemu-img:`` prefix."""
    lines = [line.strip() for line in (err or out).splitlines() if line.strip()]
    text = lines[-1] if lines else "no message"
    return text.removeprefix("qemu-img: ")


async def _qemu_img(owner: Owner, argv: list[str], what: str) -> str:
    status, out, err = await run(owner, ["qemu-img", *argv])
    if status != 0:
        raise StorageError(f"{what}: qemu-img failed: {_message(err, out)}")
    return out


async def info(owner: Owner, path: Path, *, what: str) -> ImageInfo:
    """What ``qemu-img info`` says of ``path``, read as ``owner``. ``-U``: a volume a
    running VM holds is still described (its header, read without the VM's lock).
    A file it cannot read is the caller's mistake: InvalidArgument, naming ``what``."""
    argv = ["qemu-img", "info", "-U", "--output=json", "--", str(path)]
    status, out, err = await run(owner, argv)
    if status != 0:
        raise InvalidArgument(f"{what} is not a disk image qemu-img can read: {_message(err, out)}")
    try:
        doc = json.loads(out)
        specific = doc.get("format-specific", {}).get("data", {})
        return ImageInfo(
            format=str(doc["format"]),
            capacity=int(doc["virtual-size"]),
            backing=doc.get("full-backing-filename") or doc.get("backing-filename"),
            backing_format=doc.get("backing-filename-format"),
            data_file=specific.get("data-file") if isinstance(specific, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{what}: qemu-img info gave no usable answer ({exc})") from None


async def check_chain(owner: Owner, path: Path, *, what: str) -> None:
    """Refuse ``path`` unless ``owner`` can open every file of its backing chain: an
    overlay is only as usable as the last file it leans on."""
    argv = ["qemu-img", "info", "-U", "--backing-chain", "--output=json", "--", str(path)]
    status, out, err = await run(owner, argv)
    if status != 0:
        raise InvalidArgument(f"{what}: its backing chain cannot be opened: {_message(err, out)}")


async def create(
    owner: Owner,
    path: Path,
    fmt: str,
    size: int,
    backing: tuple[Path, str] | None = None,
    *,
    what: str,
) -> None:
    argv = ["create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", str(backing[0]), "-F", backing[1]]
    argv += ["--", str(path), str(size)]
    await _qemu_img(owner, argv, what)


async def convert(
    owner: Owner,
    source: Path,
    target: Path,
    fmt: str,
    backing: tuple[str, str] | None = None,
    *,
    what: str,
) -> None:
    """Copy ``source`` (format ``fmt``) to a new ``target`` of the same format, sparse.
    ``backing``: the source's backing file and format, kept as the copy's (an overlay
    is copied as an overlay, not flattened)."""
    argv = ["convert", "-q", "-f", fmt, "-O", fmt]
    if backing is not None:
        argv += ["-B", backing[0], "-F", backing[1]]
    argv += ["--", str(source), str(target)]
    await _qemu_img(owner, argv, what)


async def resize(owner: Owner, path: Path, fmt: str, size: int) -> None:
    await _qemu_img(owner, ["resize", "-q", "-f", fmt, "--", str(path), str(size)],
                    f"resizing {path.name}")  # fmt: skip

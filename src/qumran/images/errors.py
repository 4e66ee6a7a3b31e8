"""Errors raised while building guest images.

Everything here derives from :class:`ImageError`, itself a :class:`qumran.errors.QumranError`,
so callers up the stack can show the message as-is.
"""

from __future__ import annotations

from qumran.errors import QumranError


class ImageError(QumranError):
    """A guest image could not be built (package missing, bad archive, tool failure)."""

    code = "image-error"
    http_status = 500


class PackageError(ImageError):
    """A Debian package could not be downloaded, resolved or unpacked."""

    code = "image-package-error"


class ModuleError(ImageError):
    """A kernel module, or one it depends on, is missing or unreadable."""

    code = "image-module-error"


class ArchiveError(ImageError):
    """An initramfs archive is malformed (raised by the parser)."""

    code = "image-archive-error"

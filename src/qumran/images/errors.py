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


class MissingTools(ImageError):
    """Host programs an image build or import needs are not installed."""

    code = "image-missing-tools"


class ToolFailed(ImageError):
    """A host program (mmdebstrap, mke2fs, qemu-img ...) failed during a build."""

    code = "image-tool-failed"


class ImageRefused(ImageError):
    """A file offered for import is not an image we accept (format, backing file, size)."""

    code = "image-refused"
    http_status = 400


class ImageNotFound(ImageError):
    """No cached image has that name."""

    code = "image-not-found"
    http_status = 404


class BadImageName(ImageError):
    """An image name that could not be a plain directory name in the cache."""

    code = "image-bad-name"
    http_status = 400

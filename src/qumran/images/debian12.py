"""``debian-12``: a Debian 12 cloud image built here from Debian's package archive.

The build, one step after another (:func:`build`):

1. ``mmdebstrap`` installs the recipe's packages into a tarball (unshare mode: no root
   needed, and as root the host's mounts stay untouched); a customize hook configures the
   system and keeps the downloaded ``.deb`` files in ``~/.cache/qumran/debian-archives``
   so the next build downloads only what changed.
2. The tarball is unpacked (in a user namespace when not root, so owners are right:
   :mod:`qumran.images.userns`) and ``mke2fs -d`` makes the ext4 root file system from
   it, straight into the partition of a sparse raw disk that ``sfdisk`` partitioned
   (:mod:`qumran.images.disk`).
3. GRUB's boot sector and core image go into the disk (:mod:`qumran.images.bootloader`).
4. ``qemu-img convert -c`` makes the compressed qcow2 kept in the cache, with the kernel,
   initrd and command line beside it for direct kernel boot.

The image is shaped for cloud-init's NoCloud datasource (a seed disk labelled ``cidata``),
DHCP on every Ethernet (systemd-networkd, ``en*``/``eth*``), SSH, the QEMU guest agent, a
getty on ttyS0, and a root partition that grows to fill a larger disk on first boot
(``cloud-initramfs-growroot``, then cloud-init's resizefs).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from qumran.images import bootloader, disk, qemuimg, tools, userns
from qumran.images.cache import Image, ImageInfo, ImageStore, now
from qumran.images.debian import default_cache_root
from qumran.images.errors import ImageError
from qumran.images.progress import Progress, Silent
from qumran.images.run import run

NAME = "debian-12"
# Bump when the build changes what it makes in a way the recipe's fields do not show.
BUILD_VERSION = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SNAPSHOT_URL = "http://snapshot.debian.org/archive"
SNAPSHOT_PATTERN = re.compile(r"\d{8}T\d{6}Z")
GIB = 1024**3
DISK_SIZE = 2 * GIB
PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools",
    "systemd", "systemd-sysv", "systemd-resolved", "udev", "dbus",
    "cloud-init", "cloud-guest-utils", "cloud-initramfs-growroot", "e2fsprogs",
    "openssh-server", "qemu-guest-agent", "sudo", "locales",
    "iproute2", "ca-certificates", "netbase", "procps", "less", "kmod",
)  # fmt: skip
PHASES = 5
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
CMDLINE_FILE = "cmdline"
DISK_FILE = "disk.qcow2"
ROOT_LABEL = "root"
TITLE = "Debian GNU/Linux 12"

NETWORK = """\
# Qumran: DHCP on every Ethernet interface. cloud-init's own network config, when a seed
# has one, is written as 10-cloud-init-*.network and wins over this file.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""
CLOUD_CFG = """\
# Qumran: configuration comes from a NoCloud seed (a disk labelled cidata, or ds=nocloud
# on the kernel command line or SMBIOS serial); do not probe cloud metadata services.
datasource_list: [ NoCloud, None ]
# C.UTF-8 is built into the C library: no locale to generate (a seed may choose another).
locale: C.UTF-8
"""
HOSTS = """\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
"""
# Run by mmdebstrap (inside its namespace, under sh) once every package is installed; $1 is
# the root. Given inline, not as a file: in unshare mode the namespace's root is a
# subordinate uid that may not read our staging directory.
CUSTOMIZE = """\
set -eu
root="$1"
mkdir -p "$root/boot/grub"
chroot "$root" systemctl enable --quiet systemd-networkd.service systemd-resolved.service \\
    serial-getty@ttyS0.service
# Every VM gets its own SSH host keys (cloud-init makes them on first boot).
rm -f "$root"/etc/ssh/ssh_host_*_key "$root"/etc/ssh/ssh_host_*_key.pub
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -f "$root/etc/.resolv.conf.systemd-resolved.bak"
echo debian > "$root/etc/hostname"
"""
# Unpack the tarball, keep the kernel and initrd, make the file system; the unpacked tree
# is removed however this ends. A normal user runs it in a user namespace (userns.helper).
MAKE_ROOT = """\
set -eu
tree="$1" tarball="$2" kernel="$3" initrd="$4"
shift 4
mkdir "$tree"
trap 'rm -rf "$tree"' EXIT
trap 'exit 130' INT TERM
tar --extract --file "$tarball" --directory "$tree" --numeric-owner --same-owner \\
    --same-permissions --xattrs --xattrs-include='*' --exclude='./dev/*'
cp --dereference "$tree/vmlinuz" "$kernel"
cp --dereference "$tree/initrd.img" "$initrd"
chmod 0644 "$kernel" "$initrd"
"$@"
"""
# mmdebstrap's "I:" lines -> how far the bootstrap phase is, and what to call it.
STEPS = (
    ("I: running apt-get update", 0.02, "reading package lists"),
    ("I: downloading packages", 0.08, "downloading packages"),
    ("I: extracting archives", 0.25, "unpacking essential packages"),
    ("I: installing essential packages", 0.30, "installing essential packages"),
    ("I: installing remaining packages", 0.45, "installing packages"),
    ("I: running --customize-hook", 0.88, "configuring"),
    ("I: cleaning package lists", 0.92, "cleaning up"),
    ("I: creating tarball", 0.94, "writing the tarball"),
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what the image is; its digest keys the cache."""

    name: str = NAME
    suite: str = SUITE
    mirror: str = MIRROR
    security_mirror: str = SECURITY_MIRROR
    snapshot: str | None = None
    packages: tuple[str, ...] = PACKAGES
    disk_size: int = DISK_SIZE
    build_version: int = BUILD_VERSION

    @property
    def fs_uuid(self) -> str:
        """The root file system's UUID, derived from the recipe: same recipe, same UUID."""
        seed = json.dumps(self._fields(), sort_keys=True).encode()
        return str(uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16], version=4))

    @property
    def cmdline(self) -> str:
        return f"root=UUID={self.fs_uuid} ro console=tty0 console=ttyS0,115200"

    def sources(self) -> list[str]:
        """apt's source lines: the release, its updates and its security updates."""
        return [
            f"deb {self.mirror} {self.suite} main",
            f"deb {self.mirror} {self.suite}-updates main",
            f"deb {self.security_mirror} {self.suite}-security main",
        ]

    def guest_files(self) -> dict[str, str]:
        """Files written into the image, by their path in it."""
        return {
            "/etc/systemd/network/90-qumran-dhcp.network": NETWORK,
            "/etc/cloud/cloud.cfg.d/90-qumran.cfg": CLOUD_CFG,
            "/etc/fstab": f"UUID={self.fs_uuid}\t/\text4\terrors=remount-ro\t0\t1\n",
            "/etc/hosts": HOSTS,
            "/boot/grub/grub.cfg": bootloader.grub_cfg(self.cmdline, TITLE),
        }

    def digest(self) -> str:
        """sha256 of the recipe, the files and scripts it writes, and GRUB's setup."""
        doc = {
            **self._fields(),
            "guest_files": self.guest_files(),
            "customize": CUSTOMIZE,
            "make_root": MAKE_ROOT,
            "grub_modules": list(bootloader.MODULES),
            "grub_early": bootloader.EARLY_CONFIG,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _fields(self) -> dict[str, object]:
        doc = asdict(self)
        doc["packages"] = sorted(self.packages)
        return doc


def recipe(
    *, snapshot: str | None = None, mirror: str | None = None, disk_size: int | None = None
) -> Recipe:
    """The debian-12 recipe; ``snapshot`` (``20250520T000000Z``) pins snapshot.debian.org."""
    if snapshot is not None and mirror is not None:
        raise ImageError("give a Debian snapshot or a mirror, not both")
    if snapshot is not None:
        if not SNAPSHOT_PATTERN.fullmatch(snapshot):
            raise ImageError(
                f"bad snapshot {snapshot!r}: use snapshot.debian.org's form, e.g. 20250520T000000Z"
            )
        return Recipe(
            mirror=f"{SNAPSHOT_URL}/debian/{snapshot}",
            security_mirror=f"{SNAPSHOT_URL}/debian-security/{snapshot}",
            snapshot=snapshot,
            disk_size=disk_size or DISK_SIZE,
        )
    if mirror is not None and not re.fullmatch(r"(https?|file)://\S+", mirror):
        raise ImageError(f"bad mirror {mirror!r}: give an http(s):// or file:// URL")
    return Recipe(mirror=mirror or MIRROR, disk_size=disk_size or DISK_SIZE)


def archive_cache(suite: str = SUITE) -> Path:
    """Where downloaded ``.deb`` files are kept between builds."""
    return default_cache_root() / "debian-archives" / suite


def build(
    rec: Recipe | None = None,
    store: ImageStore | None = None,
    progress: Progress | None = None,
    *,
    force: bool = False,
) -> tuple[Image, bool]:
    """The image for ``rec``, built unless the cache has it; and whether it was built."""
    rec = rec if rec is not None else recipe()
    store = store if store is not None else ImageStore()
    progress = progress if progress is not None else Silent()
    digest = rec.digest()
    cached = store.find(rec.name)
    if cached is not None and cached.info.digest == digest and not force:
        return cached, False
    tools.require(tools.BUILD_TOOLS, f"building {rec.name}", grub_pc=True)
    with store.staging(rec.name) as stage:
        work = stage.path / "work"
        work.mkdir()
        progress.phase("bootstrapping Debian 12 (mmdebstrap)")
        tarball = bootstrap(rec, work, progress)
        progress.phase("making the root file system")
        raw = work / "disk.raw"
        part = make_root_disk(rec, tarball, raw, stage.path)
        tarball.unlink()
        progress.phase("installing the boot loader (GRUB)")
        bootloader.install(raw, part, bootloader.load(work))
        progress.phase("compressing the disk (qcow2)")
        qemuimg.convert(
            raw,
            stage.path / DISK_FILE,
            source_format="raw",
            target_format="qcow2",
            compress=True,
            on_fraction=progress.fraction,
        )
        progress.phase("storing the image")
        shutil.rmtree(work)
        (stage.path / CMDLINE_FILE).write_text(rec.cmdline + "\n")
        image = stage.commit(image_info(rec, digest))
    return image, True


def image_info(rec: Recipe, digest: str) -> ImageInfo:
    recipe_doc = rec._fields()
    return ImageInfo(
        name=rec.name, disk=DISK_FILE, format="qcow2", digest=digest, created=now(),
        source="built", virtual_size=rec.disk_size, kernel=KERNEL_FILE, initrd=INITRD_FILE,
        cmdline=rec.cmdline, recipe=recipe_doc,
    )  # fmt: skip


def mmdebstrap_argv(rec: Recipe, work: Path, tarball: Path, archives: Path) -> list[str]:
    """The mmdebstrap command: packages, hooks and sources (see the module docstring)."""
    argv = [
        "mmdebstrap", "--mode=unshare", "--variant=apt", "--components=main",
        "--include=" + ",".join(rec.packages),
        # Reuse and keep the .deb files: a warm build downloads only what changed.
        "--skip=download/empty", "--skip=essential/unlink",
        "--setup-hook=" + 'mkdir -p "$1"/var/cache/apt/archives',
        "--setup-hook=" + shlex.join(["sync-in", str(archives), "/var/cache/apt/archives/"]),
        "--customize-hook=" + CUSTOMIZE,
    ]  # fmt: skip
    files = work / "files"
    files.mkdir()
    for i, (inside, text) in enumerate(sorted(rec.guest_files().items())):
        outside = files / f"{i}-{Path(inside).name}"
        outside.write_text(text)
        outside.chmod(0o644)
        argv.append("--customize-hook=" + shlex.join(["upload", str(outside), inside]))
    argv.append(
        "--customize-hook=" + shlex.join(["sync-out", "/var/cache/apt/archives", str(archives)])
    )
    if rec.snapshot:
        # A snapshot's Release files are past their Valid-Until date by design.
        argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
    argv += [rec.suite, str(tarball), *rec.sources()]
    return argv


def bootstrap(rec: Recipe, work: Path, progress: Progress) -> Path:
    archives = archive_cache(rec.suite)
    try:
        archives.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create the package cache {archives}: {exc.strerror}") from exc
    tarball = work / "root.tar"
    argv = mmdebstrap_argv(rec, work, tarball, archives)

    def line(text: str) -> None:
        for prefix, done, detail in STEPS:
            if text.startswith(prefix):
                progress.fraction(done, detail)

    run(argv, "bootstrapping Debian (mmdebstrap)", on_line=line, cwd=work)
    return tarball


def make_root_disk(rec: Recipe, tarball: Path, raw: Path, out: Path) -> disk.Layout:
    """The partitioned raw disk with the root file system; the kernel and initrd to ``out``."""
    part = disk.layout(rec.disk_size)
    disk_id = int(rec.fs_uuid.replace("-", "")[:8], 16)
    disk.make_disk(raw, part, disk_id)
    tree = raw.parent / "root"
    mke2fs = disk.mke2fs_argv(raw, part, tree, rec.fs_uuid, ROOT_LABEL)
    mke2fs[0] = tools.program("mke2fs")
    helper = userns.helper()
    script = [
        "sh", "-c", MAKE_ROOT, "make-root", str(tree), str(tarball),
        str(out / KERNEL_FILE), str(out / INITRD_FILE), *mke2fs,
    ]  # fmt: skip
    run([*helper, *script], "making the root file system")
    return part

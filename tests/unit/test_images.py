"""Guest image building blocks: newc archives, module dependencies, bzImage unpacking,
the Debian package cache and the demo image, all on hand-made inputs (no network)."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from qumran.images import demo, initramfs
from qumran.images.debian import DebCache, parse_depends
from qumran.images.demo import READY_LINE, build_demo
from qumran.images.errors import ArchiveError, ImageError, ModuleError
from qumran.images.kernel import vmlinux_from_bzimage
from qumran.images.kmod import ModuleTree, modinfo

# --- newc archives -------------------------------------------------------------------------


def sample_archive() -> initramfs.Archive:
    return initramfs.Archive(
        [
            initramfs.file("init", b"#!/bin/sh\necho hi\n", 0o755),
            initramfs.file("etc/deep/x", b"abc"),  # parents created on the fly
            initramfs.symlink("bin/sh", "/bin/busybox"),
            initramfs.directory("empty"),
            initramfs.chardev("dev/console", 5, 1),
        ]
    )


def test_parents_come_before_children() -> None:
    paths = [e.path for e in sample_archive().entries]
    assert paths.index("etc") < paths.index("etc/deep") < paths.index("etc/deep/x")
    assert paths.index("bin") < paths.index("bin/sh")


def test_round_trip_through_the_parser() -> None:
    archive = sample_archive()
    parsed = {e.path: e for e in initramfs.parse(archive.to_bytes())}
    assert parsed["init"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(parsed["init"].mode) == 0o755
    assert parsed["bin/sh"].kind == "symlink" and parsed["bin/sh"].data == b"/bin/busybox"
    assert parsed["empty"].kind == "dir"
    assert parsed["dev/console"].kind == "chardev" and parsed["dev/console"].rdev == (5, 1)
    assert [e.path for e in archive.entries] == list(parsed)


@pytest.mark.parametrize("size", range(9))
def test_every_name_and_data_length_is_padded_to_four(size: int) -> None:
    entry = initramfs.file("n" * (size + 1), bytes(range(size)))
    raw = initramfs.Archive([entry]).to_bytes()
    assert len(raw) % 4 == 0
    assert initramfs.parse(raw) == [entry]


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    sample_archive().write_gzip(first)
    sample_archive().write_gzip(second)
    assert first.read_bytes() == second.read_bytes()
    assert initramfs.parse(first.read_bytes()) == initramfs.parse(
        gzip.decompress(second.read_bytes())
    )


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_cpio_tool_extracts_what_we_wrote(tmp_path: Path) -> None:
    image = tmp_path / "initrd.img"
    initramfs.Archive(
        [
            initramfs.file("init", b"#!/bin/sh\n", 0o755),
            initramfs.file("etc/deep/x", b"abc"),
            initramfs.symlink("bin/sh", "/bin/busybox"),
        ]
    ).write_gzip(image)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "-H", "newc"],
        input=gzip.decompress(image.read_bytes()),
        cwd=out,
        check=True,
    )
    assert (out / "etc/deep/x").read_bytes() == b"abc"
    assert os.readlink(out / "bin/sh") == "/bin/busybox"
    assert (out / "init").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"070702" + b"0" * 104,  # an old-format magic
        initramfs.Archive([initramfs.file("x", b"data")]).to_bytes()[:120],  # truncated
        b"070701" + b"Z" * 104,  # non-hex fields
        initramfs.Archive([initramfs.file("x", b"")]).to_bytes()[:-124],  # no trailer
    ],
)
def test_malformed_archives_are_rejected(raw: bytes) -> None:
    with pytest.raises(ArchiveError):
        initramfs.parse(raw)


@pytest.mark.parametrize("path", ["", "/", "a/../b", "../etc"])
def test_paths_that_escape_are_rejected(path: str) -> None:
    with pytest.raises(ArchiveError):
        initramfs.file(path, b"")


# --- kernel modules ------------------------------------------------------------------------


def fake_module(**info: str) -> bytes:
    """A minimal ELF64 object with a .modinfo section, as modpost would leave it."""
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in info.items())
    names = b"\0.modinfo\0.shstrtab\0"
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    shoff = 64 + len(body) + len(names)
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    shdr = struct.Struct("<IIQQQQIIQQ")
    sections = bytes(64) + shdr.pack(1, 1, 0, 0, 64, len(body), 0, 0, 1, 0)
    sections += shdr.pack(10, 3, 0, 0, 64 + len(body), len(names), 0, 0, 1, 0)
    return bytes(header) + body + names + sections


def fake_kernel_tree(root: Path, modules: dict[str, str], builtin: str = "") -> Path:
    """An unpacked kernel package: lib/modules/<version>/kernel/<name>.ko with depends."""
    base = root / "lib/modules/6.1.0-99-test"
    for name, depends in modules.items():
        ko = base / "kernel/drivers" / f"{name}.ko"
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_bytes(fake_module(name=name.replace("-", "_"), depends=depends, license="GPL"))
    (base / "modules.builtin").write_text(builtin)
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot/vmlinuz-6.1.0-99-test").write_bytes(b"fake kernel")
    return root


def test_modinfo_reads_the_section() -> None:
    info = modinfo(fake_module(name="virtio_pci", depends="virtio,virtio_ring"))
    assert info == {"name": "virtio_pci", "depends": "virtio,virtio_ring"}
    with pytest.raises(ModuleError):
        modinfo(b"\x7fELF\x01" + bytes(60))  # 32-bit


def test_load_order_puts_dependencies_first(tmp_path: Path) -> None:
    tree = ModuleTree(
        fake_kernel_tree(
            tmp_path,
            {
                "virtio_ring": "",
                "virtio": "virtio_ring",
                "virtio_pci": "virtio,virtio_ring",
                "virtio-rng": "virtio,rng_core",
                "rng_core": "",
            },
            builtin="kernel/drivers/char/hw_random/rng-core.ko\n",
        )
    )
    names = [m.name for m in tree.load_order(["virtio_pci", "virtio-rng", "virtio"])]
    assert names == ["virtio_ring", "virtio", "virtio_pci", "virtio_rng"]  # rng_core built in


def test_cycles_and_missing_modules_are_errors(tmp_path: Path) -> None:
    tree = ModuleTree(fake_kernel_tree(tmp_path, {"a": "b", "b": "a", "c": "nowhere"}))
    with pytest.raises(ModuleError, match="cycle"):
        tree.load_order(["a"])
    with pytest.raises(ModuleError, match="nowhere"):
        tree.load_order(["c"])


# --- bzImage ---------------------------------------------------------------------------------


def fake_bzimage(payload: bytes, setup_sects: int = 2) -> bytes:
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, 0x40, len(payload))
    return bytes(image) + bytes(0x40) + payload + struct.pack("<I", 1234)


def test_vmlinux_is_unpacked_from_the_payload() -> None:
    elf = b"\x7fELF" + os.urandom(4096)
    packed = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert vmlinux_from_bzimage(fake_bzimage(packed)) == elf


def test_non_bzimages_and_other_compressions_are_refused() -> None:
    with pytest.raises(ImageError, match="HdrS"):
        vmlinux_from_bzimage(bytes(4096))
    with pytest.raises(ImageError, match="xz"):
        vmlinux_from_bzimage(fake_bzimage(gzip.compress(b"\x7fELF")))


# --- Debian package cache and the demo image ------------------------------------------------


def test_depends_field_parsing() -> None:
    field = "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120) | linux-initramfs-tool"
    assert parse_depends(field) == ["kmod", "linux-base", "initramfs-tools"]


def build_deb(tree: Path, out_dir: Path, package: str, depends: str = "") -> None:
    """A real .deb made with dpkg-deb, so the cache reads it the way it reads Debian's."""
    control = tree / "DEBIAN" / "control"
    control.parent.mkdir(parents=True, exist_ok=True)
    fields = f"Package: {package}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\n"
    fields += f"Depends: {depends}\n" if depends else ""
    control.write_text(fields + "Description: test package\n")
    out = out_dir / f"{package}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)],
                   check=True, capture_output=True)  # fmt: skip


FAKE_BUSYBOX = """#!/bin/sh
[ "$1" = --list-full ] && printf 'bin/sh\\nsbin/init\\nsbin/acpid\\nsbin/poweroff\\n'
"""


@pytest.fixture
def fake_debs(tmp_path: Path) -> DebCache:
    """A package cache holding a kernel metapackage, its kernel and busybox-static."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    cache = tmp_path / "debs"
    cache.mkdir()
    modules = {name: "" for name in demo.MODULES} | {"virtio_net": "failover", "failover": ""}
    kernel = fake_kernel_tree(tmp_path / "kernel", modules)
    build_deb(kernel, cache, "linux-image-6.1.0-99-cloud-amd64")
    build_deb(tmp_path / "meta", cache, "linux-image-cloud-amd64",
              "linux-image-6.1.0-99-cloud-amd64 (= 1.0), kmod")  # fmt: skip
    busybox = cache / "busybox-static" / "bin" / "busybox"  # an unpacked tree is used as is
    busybox.parent.mkdir(parents=True)
    busybox.write_text(FAKE_BUSYBOX)
    busybox.chmod(0o755)
    return DebCache(cache)


def test_kernel_metapackage_resolves_to_the_real_package(fake_debs: DebCache) -> None:
    assert fake_debs.resolve_kernel("linux-image-cloud-amd64") == "linux-image-6.1.0-99-cloud-amd64"


def test_demo_image_is_built_then_reused(fake_debs: DebCache, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    image = build_demo(out, debs=fake_debs)
    assert image.kernel.read_bytes() == b"fake kernel"
    assert image.ready_line == READY_LINE == "QUMRAN-DEMO READY"
    assert image.definition == out / "demo.yaml"
    definition = yaml.safe_load(image.definition.read_text())
    assert definition == {
        "name": "demo", "memory": "256M", "vcpus": 1,
        "boot": {"kernel": str(out / "vmlinuz"), "initrd": str(out / "initrd.img"),
                 "cmdline": image.cmdline},
    }  # fmt: skip
    built = image.initrd.stat().st_mtime_ns
    # A cache rooted at a plain file cannot serve (nor download) anything.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    assert build_demo(out, debs=DebCache(blocked)) == image  # cached: no package needed
    assert image.initrd.stat().st_mtime_ns == built
    with pytest.raises(ImageError):
        build_demo(out, force=True, debs=DebCache(blocked))
    image.initrd.unlink()  # a missing piece is rebuilt
    assert build_demo(out, debs=fake_debs).initrd.is_file()


def test_demo_initramfs_contents(fake_debs: DebCache, tmp_path: Path) -> None:
    image = build_demo(tmp_path / "demo", debs=fake_debs)
    entries = {e.path: e for e in initramfs.parse(image.initrd.read_bytes())}
    init = entries["init"].data.decode()
    assert entries["init"].mode & 0o111
    for mount in ("-t proc", "-t sysfs", "-t devtmpfs"):
        assert mount in init
    insmods = [line.split()[1].rsplit("/", 1)[1] for line in init.splitlines()
               if line.startswith("insmod")]  # fmt: skip
    assert insmods.index("failover.ko") < insmods.index("virtio_net.ko")
    assert {"button.ko", "evdev.ko", "virtio-rng.ko"} <= set(insmods)
    assert init.rstrip().endswith("exec /sbin/init")
    assert "acpid -f" in init
    assert "ttyS0::respawn:-/bin/sh" in entries["etc/inittab"].data.decode()
    assert f"echo {READY_LINE}" in entries["etc/profile"].data.decode()
    assert entries["etc/acpi/PWRF/00000080"].mode & 0o111
    assert entries["sbin/acpid"].data == b"/bin/busybox"
    assert entries["dev/console"].rdev == (5, 1)


def test_concurrent_builds_do_not_corrupt_the_image(fake_debs: DebCache, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda _: build_demo(out, force=True, debs=fake_debs), range(4)))
    assert len(set(images)) == 1
    assert "init" in {e.path for e in initramfs.parse(images[0].initrd.read_bytes())}
    assert sorted(p.name for p in out.iterdir()) == ["demo.yaml", "initrd.img", "vmlinuz"]

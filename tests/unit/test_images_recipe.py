"""The debian-12 recipe: what decides the image, its digest (the cache key), and the
mmdebstrap command built from it."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from qumran.images import debian12
from qumran.images.errors import ImageError


def test_the_same_recipe_has_the_same_digest() -> None:
    assert debian12.recipe().digest() == debian12.recipe().digest()
    assert len(debian12.recipe().digest()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"packages": (*debian12.PACKAGES, "vim")},
        {"mirror": "http://mirror.example/debian"},
        {"snapshot": "20250520T000000Z"},
        {"disk_size": 4 * debian12.GIB},
        {"build_version": debian12.BUILD_VERSION + 1},
        {"suite": "trixie"},
    ],
)
def test_every_field_of_the_recipe_is_in_its_digest(change: dict[str, object]) -> None:
    base = debian12.recipe()
    assert dataclasses.replace(base, **change).digest() != base.digest()  # type: ignore[arg-type]


def test_package_order_does_not_change_the_digest() -> None:
    base = debian12.recipe()
    shuffled = dataclasses.replace(base, packages=tuple(reversed(base.packages)))
    assert shuffled.digest() == base.digest()


def test_the_files_written_into_the_image_are_in_the_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = debian12.recipe().digest()
    monkeypatch.setattr(debian12, "NETWORK", debian12.NETWORK + "# changed\n")
    assert debian12.recipe().digest() != before


def test_the_root_uuid_comes_from_the_recipe() -> None:
    a, b = debian12.recipe(), debian12.recipe(disk_size=4 * debian12.GIB)
    assert a.fs_uuid == debian12.recipe().fs_uuid
    assert a.fs_uuid != b.fs_uuid
    assert uuid.UUID(a.fs_uuid).version == 4
    assert f"root=UUID={a.fs_uuid}" in a.cmdline
    assert "console=ttyS0" in a.cmdline
    assert f"UUID={a.fs_uuid}\t/\text4" in a.guest_files()["/etc/fstab"]


def test_a_snapshot_pins_every_source_to_snapshot_debian_org() -> None:
    rec = debian12.recipe(snapshot="20250520T000000Z")
    assert rec.sources() == [
        "deb http://snapshot.debian.org/archive/debian/20250520T000000Z bookworm main",
        "deb http://snapshot.debian.org/archive/debian/20250520T000000Z bookworm-updates main",
        "deb http://snapshot.debian.org/archive/debian-security/20250520T000000Z "
        "bookworm-security main",
    ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"snapshot": "2025-05-20"}, "bad snapshot"),
        ({"snapshot": "20250520T000000Z", "mirror": "http://x/"}, "not both"),
        ({"mirror": "ftp://x/debian"}, "bad mirror"),
        ({"mirror": "http://x/debian bookworm main\ndeb http://evil/"}, "bad mirror"),
    ],
)
def test_bad_recipe_options_are_refused(kwargs: dict[str, str], words: str) -> None:
    with pytest.raises(ImageError, match=words):
        debian12.recipe(**kwargs)  # type: ignore[arg-type]


def test_the_image_is_shaped_for_cloud_init_ssh_and_dhcp() -> None:
    rec = debian12.recipe()
    for package in ("cloud-init", "openssh-server", "qemu-guest-agent",
                    "cloud-initramfs-growroot", "linux-image-cloud-amd64", "systemd"):  # fmt: skip
        assert package in rec.packages
    files = rec.guest_files()
    network = files["/etc/systemd/network/90-qumran-dhcp.network"]
    assert "Name=en* eth*" in network and "DHCP=yes" in network
    assert "NoCloud" in files["/etc/cloud/cloud.cfg.d/90-qumran.cfg"]
    grub = files["/boot/grub/grub.cfg"]
    assert f"linux /vmlinuz {rec.cmdline}" in grub and "serial --unit=0" in grub
    assert "serial-getty@ttyS0.service" in debian12.CUSTOMIZE


def test_the_mmdebstrap_command_uploads_every_guest_file(tmp_path: Path) -> None:
    rec = debian12.recipe(snapshot="20250520T000000Z")
    argv = debian12.mmdebstrap_argv(rec, tmp_path, tmp_path / "root.tar", tmp_path / "debs")
    assert argv[:2] == ["mmdebstrap", "--mode=unshare"]
    uploads = [a for a in argv if a.startswith("--customize-hook=upload ")]
    assert sorted(a.split()[-1] for a in uploads) == sorted(rec.guest_files())
    for hook in uploads:
        outside = Path(hook.split()[1])
        assert outside.read_text() == rec.guest_files()[hook.split()[2]]
    assert "--customize-hook=" + debian12.CUSTOMIZE in argv
    assert argv[-5:-3] == ["bookworm", str(tmp_path / "root.tar")]
    assert argv[-3:] == rec.sources()
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv
    # The .deb files are kept between builds.
    assert f"--customize-hook=sync-out /var/cache/apt/archives {tmp_path / 'debs'}" in argv

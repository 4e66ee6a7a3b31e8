"""The native driver's checks and its qumran-vmm command line (the kvm tier boots it)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers.base import HandoffFds, Owner, RunPaths
from qumran.drivers.native import storage
from qumran.drivers.native.driver import (
    NativeDriver,
    NativeInstance,
    build_argv,
    in_definition_terms,
)
from qumran.drivers.qemu.accel import AccelChoice
from qumran.errors import InvalidArgument
from qumran.vmm import cmdline
from qumran.vmm.devices.virtio.backends import DiskSpec

PATHS = RunPaths(Path("/run/qumran/vms/web"))
OWNER = Owner(os.getuid(), os.getgid())  # the test itself: files opened as it is


# What the host check answers on a host with and without hardware KVM (drivers/qemu/accel.py).
def hardware_kvm() -> AccelChoice:
    return AccelChoice("kvm", "KVM: the CPU has vmx and /dev/kvm answers API version 12")


def software_kvm() -> AccelChoice:
    return AccelChoice(
        "tcg",
        "TCG: /dev/kvm answers but the CPU has no vmx/svm flag "
        "(a software KVM cannot run a stock kernel)",
    )


def spec(tmp: Path, **fields: Any) -> VmSpec:
    for name in ("vmlinuz", "initrd", "a.img", "b.img"):
        (tmp / name).write_bytes(b"\0" * 4096)
    doc: dict[str, Any] = {
        "name": "web", "memory": "256M", "hypervisor": "native",
        "boot": {"kernel": str(tmp / "vmlinuz"), "initrd": str(tmp / "initrd")},
    }  # fmt: skip
    return VmSpec.model_validate({**doc, **fields})


def test_raw_disks_become_virtio_blk_in_order_and_qumran_vmm_reads_them_back(
    tmp_path: Path,
) -> None:
    disks = [{"path": str(tmp_path / "a.img")}, {"path": str(tmp_path / "b.img"), "readonly": True}]
    s = spec(tmp_path, disks=disks)
    NativeDriver("qumran-vmm", probe=hardware_kvm).check(s, OWNER)
    args = cmdline.parse(build_argv(s, HandoffFds(3, 4, 5), "qumran-vmm")[1:])
    assert [DiskSpec.parse(d) for d in args.disk] == [
        DiskSpec(str(tmp_path / "a.img"), False),
        DiskSpec(str(tmp_path / "b.img"), True),
    ]


def test_the_seed_is_a_read_only_disk_by_fd_after_the_vms_own(tmp_path: Path) -> None:
    s = spec(tmp_path, disks=[{"path": str(tmp_path / "a.img")}], cloud_init={})
    NativeDriver("qumran-vmm", probe=hardware_kvm).check(s, OWNER)
    args = cmdline.parse(build_argv(s, HandoffFds(3, 4, 5, seed=6), "qumran-vmm")[1:])
    assert [DiskSpec.parse(d) for d in args.disk] == [
        DiskSpec(str(tmp_path / "a.img"), False),
        DiskSpec("fd=6", True, fd=6),
    ]


def test_an_inherited_image_is_read_only_unless_its_fd_allows_writes(tmp_path: Path) -> None:
    from qumran.vmm.devices.errors import DeviceError
    from qumran.vmm.devices.virtio.blk import DiskImage

    (tmp_path / "seed.iso").write_bytes(b"\1" * 8192)
    fd = os.open(tmp_path / "seed.iso", os.O_RDONLY)
    with pytest.raises(DeviceError, match=r"^--disk fd=\d+: open read-only; add ,ro"):
        DiskImage.inherit(fd, readonly=False)
    image = DiskImage.inherit(fd, readonly=True)
    try:
        assert (image.size, image.readonly, image.fd) == (8192, True, fd)
        assert not os.get_inheritable(fd)  # not passed on to passt
    finally:
        image.close()
    with pytest.raises(DeviceError, match=r"^--disk 'fd=x,ro': fd= needs a file descriptor"):
        DiskSpec.parse("fd=x,ro")


def test_user_nics_become_passt_with_their_forwards_in_nic_order(tmp_path: Path) -> None:
    from qumran.drivers.base import NetFds
    from qumran.vmm.devices.virtio.backends import parse_net
    from qumran.vmm.devices.virtio.passt_link import PasstForward, PasstSpec

    nics = [{"forward": ["tcp:127.0.0.1:2222-:22", "udp::5353-10.0.2.15:53"]},
            {"network": "default", "mac": "52:54:00:00:00:02"},
            {"mac": "52:54:00:00:00:03"}]  # fmt: skip
    s = spec(tmp_path, nics=nics)
    NativeDriver("qumran-vmm", probe=hardware_kvm).check(s, OWNER)
    fds = HandoffFds(3, 4, 5, nets=(NetFds(7, None),))
    args = cmdline.parse(build_argv(s, fds, "qumran-vmm")[1:])
    first, _, last = (parse_net(n) for n in args.net)
    assert isinstance(first, PasstSpec) and first.forwards == (
        PasstForward("tcp", "127.0.0.1", 2222, 22), PasstForward("udp", "", 5353, 53))  # fmt: skip
    assert first.mac is not None and first.mac.startswith("52:54:00")
    assert args.net[1] == "fd=7,mac=52:54:00:00:00:02,vhost=off"
    assert last == PasstSpec("52:54:00:00:00:03")


QCOW2 = {"disks": [{"path": "/img/a.qcow2", "format": "qcow2"}]}
COMMA = {"disks": [{"path": "/img/a,b.img"}]}
MISSING = {"disks": [{"path": "/nonexistent/a.img"}]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (COMMA, "disks[0].path: qumran-vmm cannot open a path with a comma"),
        ({"nics": [{"forward": ["tcp::2222-10.0.2.9:22"]}]},
         "nics[0].forward: 'tcp::2222-10.0.2.9:22': qumran-vmm forwards to the guest's own"),
        ({"graphics": True}, "graphics: qumran-vmm has no display"),
        (MISSING, "disks[0].path: /nonexistent/a.img cannot be opened by uid"),
    ],
)
def test_what_qumran_vmm_cannot_do_is_one_clear_error(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        NativeDriver("qumran-vmm", probe=hardware_kvm).check(spec(tmp_path, **fields), OWNER)
    assert str(err.value).startswith(message)


def test_qcow2_without_a_storage_daemon_installed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "binary", lambda: None)
    with pytest.raises(InvalidArgument) as err:
        NativeDriver("qumran-vmm", probe=hardware_kvm).check(spec(tmp_path, **QCOW2), OWNER)
    assert str(err.value).startswith(
        "disks[0].format: qumran-vmm serves qcow2 images through qemu-storage-daemon, which is"
        " not installed (Debian: qemu-utils)"
    )


def test_qcow2_disks_go_through_their_vhost_user_sockets(tmp_path: Path) -> None:
    disks = [{"path": str(tmp_path / "a.img")}, {"path": "/img/b.qcow2", "format": "qcow2"}]
    s = spec(tmp_path, disks=disks)
    exports = storage.exports_of(s)
    assert [(e.index, e.format) for e in exports] == [(1, "qcow2")]
    sock = storage.socket_path(PATHS, 1)
    assert sock == Path("/run/qumran/vhost-user/web/disk1.sock")
    args = cmdline.parse(build_argv(s, HandoffFds(3, 4, 5), "qumran-vmm", {1: sock})[1:])
    assert [DiskSpec.parse(d) for d in args.disk] == [
        DiskSpec(str(tmp_path / "a.img"), False),
        DiskSpec(str(sock), vhost_user=True),
    ]


def test_qumran_vmm_refusing_a_back_end_is_told_in_the_definitions_terms() -> None:
    sock = storage.socket_path(PATHS, 1)
    said = (f"qumran-vmm failed to start VM web: qumran-vmm: error: --disk vhost-user={sock}: "
            f"vhost-user back end {sock} does not offer VIRTIO_F_VERSION_1")  # fmt: skip
    assert in_definition_terms(said, {1: sock}) == (
        "qumran-vmm failed to start VM web: qumran-vmm: error: disks[1]: "
        f"vhost-user back end {sock} does not offer VIRTIO_F_VERSION_1"
    )


class _Control:
    """The control socket's answer to ``status``, as qumran-vmm gives it."""

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices

    async def call(self, cmd: str) -> dict[str, Any]:
        assert cmd == "status"
        return {"state": "running", "devices": self.devices}


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([], None),  # no disk: nothing to count, as QEMU without block devices
        ([{"type": "net", "rx_bytes": 5}], None),
        ([{"type": "disk", "read_bytes": 4096, "write_bytes": 512},
          {"type": "rng"},
          {"type": "disk", "read_bytes": 1, "write_bytes": 2}], (4097, 514)),
    ],
)  # fmt: skip
def test_disk_bytes_come_from_qumran_vmm_counters(
    devices: list[dict[str, Any]], expected: tuple[int, int] | None
) -> None:
    instance = NativeInstance.__new__(NativeInstance)
    instance.control = _Control(devices)  # type: ignore[assignment]
    instance.storage = None
    assert asyncio.run(instance.block_io()) == expected


def test_a_host_without_hardware_kvm_is_refused_in_the_definitions_terms(tmp_path: Path) -> None:
    driver = NativeDriver("qumran-vmm", probe=software_kvm)
    with pytest.raises(InvalidArgument) as refused:
        driver.check(spec(tmp_path), OWNER)
    assert refused.value.message == (
        "hypervisor: native cannot run on this host: qumran-vmm needs a hardware KVM: "
        "/dev/kvm answers but the CPU has no vmx/svm flag (a software KVM cannot run a stock "
        "kernel); use hypervisor: qemu, which emulates the CPU (TCG) where there is no KVM"
    )
    assert "--force-kvm" not in refused.value.message
    assert driver.host_info().available is False


def test_network_nics_become_net_fd_options_qumran_vmm_reads_back(tmp_path: Path) -> None:
    from qumran.drivers.base import NetFds
    from qumran.vmm.devices.virtio.backends import NetSpec

    nics = [{"network": "lan", "mac": "52:54:00:00:00:0a"}, {"network": "iso",
             "mac": "52:54:00:00:00:0b"}]  # fmt: skip
    s = spec(tmp_path, nics=nics)
    NativeDriver("qumran-vmm", probe=hardware_kvm).check(s, OWNER)  # no longer refused
    fds = HandoffFds(3, 4, 5, nets=(NetFds(7), NetFds(8, 9)))
    argv = build_argv(s, fds, "qumran-vmm")
    args = cmdline.parse(argv[1:])
    assert [NetSpec.parse(n) for n in args.net] == [
        NetSpec(None, 7, "52:54:00:00:00:0a", False, None),  # no vhost fd: vhost=off
        NetSpec(None, 8, "52:54:00:00:00:0b", True, 9),  # the daemon's /dev/vhost-net
    ]
    with pytest.raises(ValueError, match="internal"):
        build_argv(s, HandoffFds(3, 4, 5, nets=(NetFds(7),)), "qumran-vmm")

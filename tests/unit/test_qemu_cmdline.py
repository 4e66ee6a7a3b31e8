"""The QEMU command line, option by option (no QEMU runs here; the integration tests
check that QEMU accepts it)."""

from __future__ import annotations

from typing import Any

import pytest

from qumran.config.spec import VmSpec
from qumran.drivers.base import HandoffFds
from qumran.drivers.qemu.cmdline import build_argv, default_mac, escape

FDS = HandoffFds(monitor=3, console=4, console_log=5)


def spec(**fields: Any) -> VmSpec:
    doc: dict[str, Any] = {
        "name": "web",
        "memory": "512M",
        "vcpus": 2,
        "boot": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "cmdline": "console=ttyS0"},
    }
    return VmSpec.model_validate({**doc, **fields})


def values(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in ``argv``, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def value(argv: list[str], flag: str) -> str:
    found = values(argv, flag)
    assert len(found) == 1, f"{flag} appears {len(found)} times in {argv}"
    return found[0]


def test_the_process_is_named_after_the_vm_and_has_no_defaults() -> None:
    argv = build_argv(spec(), FDS, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert value(argv, "-name") == "guest=web,process=qumran-web,debug-threads=on"
    assert "-nodefaults" in argv and "-no-user-config" in argv


def test_guest_poweroff_ends_the_process() -> None:
    assert "-no-shutdown" not in build_argv(spec(), FDS, "tcg")


@pytest.mark.parametrize(("accel", "cpu"), [("kvm", "host"), ("tcg", "max")])
def test_accelerator_chooses_the_cpu_model(accel: str, cpu: str) -> None:
    argv = build_argv(spec(), FDS, accel)  # type: ignore[arg-type]
    assert value(argv, "-accel") == accel
    assert value(argv, "-cpu") == cpu
    assert value(argv, "-machine") == "q35"


def test_memory_and_vcpus() -> None:
    argv = build_argv(spec(memory="1G", vcpus=3), FDS, "tcg")
    assert value(argv, "-m") == "1024"
    assert value(argv, "-smp") == "3"


def test_kernel_boot() -> None:
    argv = build_argv(spec(), FDS, "tcg")
    assert value(argv, "-kernel") == "/boot/vmlinuz"
    assert value(argv, "-initrd") == "/boot/initrd"
    assert value(argv, "-append") == "console=ttyS0"


def test_kernel_boot_without_initrd_or_cmdline() -> None:
    argv = build_argv(spec(boot={"kernel": "/k"}), FDS, "tcg")
    assert value(argv, "-kernel") == "/k"
    assert "-initrd" not in argv and "-append" not in argv


def test_monitor_is_qmp_on_the_socket_the_daemon_made() -> None:
    argv = build_argv(spec(), FDS, "tcg")
    chardevs = values(argv, "-chardev")
    assert "socket,id=monitor,fd=3,server=on,wait=off" in chardevs
    assert value(argv, "-mon") == "chardev=monitor,mode=control"
    assert "-pidfile" not in argv  # QEMU writes nothing where the daemon keeps its files


def test_serial_console_is_a_socket_with_a_log_the_daemon_opened() -> None:
    argv = build_argv(spec(), FDS, "tcg")
    serial = values(argv, "-chardev")[0]
    assert serial == (
        "socket,id=serial0,fd=4,server=on,wait=off,logfile=/dev/fdset/1,logappend=on"
    )
    assert value(argv, "-add-fd") == "fd=5,set=1,opaque=console.log"
    assert value(argv, "-serial") == "chardev:serial0"


def test_console_listens_before_the_monitor() -> None:
    # Chardevs are created in order: once QMP answers, the console accepts too.
    ids = [c.split(",")[1] for c in values(build_argv(spec(), FDS, "tcg"), "-chardev")]
    assert ids == ["id=serial0", "id=monitor"]


def test_no_serial() -> None:
    argv = build_argv(spec(serial=False), HandoffFds(3, None, 5), "tcg")
    assert "-serial" not in argv and "-add-fd" not in argv
    assert [c for c in values(argv, "-chardev") if "serial0" in c] == []


def test_headless_unless_graphics() -> None:
    argv = build_argv(spec(), FDS, "tcg")
    assert value(argv, "-display") == "none"
    assert "-vnc" not in argv and "VGA" not in values(argv, "-device")
    argv = build_argv(spec(graphics=True), FDS, "tcg")
    assert value(argv, "-vnc") == "none"  # viewers come over QMP (add_client), no socket
    assert "VGA" in values(argv, "-device")


def test_disks_are_blockdev_nodes_behind_virtio_blk() -> None:
    disks = [{"path": "/img/a.qcow2", "format": "qcow2"}, {"path": "/img/b", "readonly": True}]
    argv = build_argv(spec(disks=disks), FDS, "tcg")
    assert values(argv, "-blockdev") == [
        "driver=file,node-name=disk0-file,filename=/img/a.qcow2,read-only=off",
        "driver=qcow2,node-name=disk0,file=disk0-file,read-only=off",
        "driver=file,node-name=disk1-file,filename=/img/b,read-only=on",
        "driver=raw,node-name=disk1,file=disk1-file,read-only=on",
    ]
    devices = values(argv, "-device")
    assert "virtio-blk-pci,drive=disk0,id=virtio-disk0" in devices
    assert "virtio-blk-pci,drive=disk1,id=virtio-disk1" in devices


def test_disk_boot_marks_the_boot_disk_and_loads_no_kernel() -> None:
    disks = [{"path": "/img/data"}, {"path": "/img/root"}]
    argv = build_argv(spec(disks=disks, boot={"disk": 1}), FDS, "tcg")
    assert "-kernel" not in argv
    devices = [d for d in values(argv, "-device") if d.startswith("virtio-blk")]
    assert devices == [
        "virtio-blk-pci,drive=disk0,id=virtio-disk0",
        "virtio-blk-pci,drive=disk1,id=virtio-disk1,bootindex=0",
    ]


def test_nics_use_user_networking_and_virtio_net() -> None:
    argv = build_argv(spec(nics=[{"mac": "52:54:00:aa:bb:cc"}, {}]), FDS, "tcg")
    assert values(argv, "-netdev") == ["user,id=net0", "user,id=net1"]
    nets = [d for d in values(argv, "-device") if d.startswith("virtio-net")]
    assert nets == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,id=virtio-net0",
        f"virtio-net-pci,netdev=net1,mac={default_mac('web', 1)},id=virtio-net1",
    ]


def test_default_macs_are_stable_unicast_and_distinct() -> None:
    mac = default_mac("web", 0)
    assert mac == default_mac("web", 0)
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert int(mac[:2], 16) & 1 == 0
    assert len({default_mac(n, i) for n in ("web", "db") for i in range(4)}) == 8


def test_commas_in_paths_are_escaped() -> None:
    argv = build_argv(spec(disks=[{"path": "/img/x,y"}]), FDS, "tcg")
    assert "filename=/img/x,,y," in values(argv, "-blockdev")[0]
    assert escape("a,b,,c") == "a,,b,,,,c"
    # -kernel and -append take a whole argument: nothing to escape there.
    argv = build_argv(spec(boot={"kernel": "/k,1", "cmdline": "a=1,2"}), FDS, "tcg")
    assert value(argv, "-kernel") == "/k,1" and value(argv, "-append") == "a=1,2"


def test_a_panic_device_reports_guest_panics() -> None:
    assert "pvpanic" in values(build_argv(spec(), FDS, "tcg"), "-device")


def test_port_forwards_become_hostfwd_options_of_their_nic() -> None:
    nics = [
        {"forward": ["tcp:127.0.0.1:2222-:22", "udp::5353-10.0.2.15:53"]},
        {},
        {"forward": ["tcp::8080-:80"]},
    ]
    netdevs = values(build_argv(spec(nics=nics), FDS, "tcg"), "-netdev")
    assert netdevs == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-10.0.2.15:53",
        "user,id=net1",
        "user,id=net2,hostfwd=tcp::8080-:80",
    ]


def test_without_a_seed_fd_there_is_no_seed_disk() -> None:
    argv = build_argv(spec(cloud_init={"hostname": "web"}), FDS, "tcg")
    assert "/dev/fdset/2" not in " ".join(argv)
    assert all("seed" not in device for device in values(argv, "-device"))


def test_the_seed_is_a_read_only_virtio_disk_from_an_fd_set_after_the_vm_disks() -> None:
    fds = HandoffFds(monitor=3, console=4, console_log=5, seed=6)
    argv = build_argv(spec(disks=[{"path": "/img/a.qcow2", "format": "qcow2"}]), fds, "tcg")
    assert values(argv, "-add-fd") == [
        "fd=6,set=2,opaque=seed.iso",
        "fd=5,set=1,opaque=console.log",
    ]
    blockdevs = values(argv, "-blockdev")
    assert blockdevs[2:] == [
        "driver=file,node-name=seed-file,filename=/dev/fdset/2,read-only=on",
        "driver=raw,node-name=seed,file=seed-file,read-only=on",
    ]
    devices = values(argv, "-device")
    disks = [d for d in devices if d.startswith("virtio-blk-pci")]
    # The VM's own disks first (vda, ...), the seed last, and never a boot device.
    assert disks == [
        "virtio-blk-pci,drive=disk0,id=virtio-disk0",
        "virtio-blk-pci,drive=seed,id=virtio-seed",
    ]


def test_a_network_nic_is_the_handed_over_tap_with_vhost_when_there_is_a_fd() -> None:
    from qumran.drivers.base import NetFds

    nics = [{"network": "lan", "mac": "52:54:00:00:00:0a"}, {"forward": ["tcp::2222-:22"]},
            {"network": "iso", "mac": "52:54:00:00:00:0b"}]  # fmt: skip
    fds = HandoffFds(3, 4, 5, nets=(NetFds(7), NetFds(8, 9)))
    argv = build_argv(spec(nics=nics), fds, "tcg")
    assert values(argv, "-netdev") == [
        "tap,id=net0,fd=7",
        "user,id=net1,hostfwd=tcp::2222-:22",
        "tap,id=net2,fd=8,vhost=on,vhostfd=9",
    ]
    devices = [d for d in values(argv, "-device") if d.startswith("virtio-net")]
    assert devices == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:0a,id=virtio-net0",
        f"virtio-net-pci,netdev=net1,mac={default_mac('web', 1)},id=virtio-net1",
        "virtio-net-pci,netdev=net2,mac=52:54:00:00:00:0b,id=virtio-net2",
    ]
    with pytest.raises(ValueError, match="no TAP"):
        build_argv(spec(nics=nics), HandoffFds(3, 4, 5, nets=(NetFds(7),)), "tcg")


def test_old_user_nics_dump_as_they_did() -> None:
    s = spec(nics=[{"type": "user", "forward": ["tcp::2222-:22"]}, {"network": "lan"}])
    assert s.model_dump(mode="json")["nics"] == [
        {"type": "user", "model": "virtio", "mac": None, "forward": ["tcp::2222-:22"]},
        {"type": "network", "network": "lan", "model": "virtio", "mac": None},
    ]

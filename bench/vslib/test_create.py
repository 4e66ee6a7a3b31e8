"""The pure pieces of bench/vs_create.py and bench/image_build.py.

Run: PYTHONPATH=src .venv/bin/pytest bench/vslib  (no libvirt, QEMU or daemon needed)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from image_build import phase_of  # bench/ is on sys.path, as for vslib

from vslib.consolewatch import MARKS, scan
from vslib.create_libvirt import ssh_argv, virt_install_argv
from vslib.create_report import BEGIN, END, CreateResults, render, write_between
from vslib.guest import create_step, forwarded_port, meta_data, user_data

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBEPnnwrG1QmQr0Yp0oPzAU9Qvvg0+bcN94+8zK+Mpap b@h"


def test_user_data_is_what_qumran_writes_for_create_ssh_key() -> None:
    from qumran.config.cloudinit import CloudInit
    from qumran.images.cloudinit import seed_files

    # The section `qumran create --ssh-key` makes (qumran.cli.create).
    section = CloudInit.model_validate({
        "hostname": "qbc1q",
        "users": [
            {"name": "debian", "ssh_authorized_keys": [KEY], "sudo": "ALL=(ALL) NOPASSWD:ALL"}
        ],
    })  # fmt: skip
    files = seed_files(section, "qbc1q", "00000000-0000-4000-8000-000000000000")
    assert user_data(KEY + "\n").encode() == files.user_data
    # With the host key qumrand makes for the VM (what create's VMs get).
    from qumran.images.cloudinit import HostKey

    key = HostKey("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\nNzaC\n-----END OPENSSH "
                  "PRIVATE KEY-----\n", KEY.rsplit(" ", 1)[0])  # fmt: skip
    keyed = seed_files(section, "qbc1q", "00000000-0000-4000-8000-000000000000", host_key=key)
    assert yaml.safe_load(user_data(KEY, host_key=key)) == yaml.safe_load(keyed.user_data)
    assert b"local-hostname: qbc1q\n" in files.meta_data
    assert meta_data("iid-1", "qbc1q").endswith("local-hostname: qbc1q\n")


def test_user_data_refuses_no_key_or_two_lines() -> None:
    with pytest.raises(ValueError):
        user_data("  \n")
    with pytest.raises(ValueError):
        user_data(KEY + "\n" + KEY)


def test_create_steps_and_the_pid() -> None:
    assert create_step("SSH key: /tmp/key.pub") == ("key", None)
    assert create_step("disk: volume qbc1q in pool default, 8 GiB, on debian-12") == ("disk", None)
    assert create_step("VM qbc1q defined; SSH forwarded from 127.0.0.1:4022") == ("defined", None)
    assert create_step("VM qbc1q started (pid 4242)") == ("started", 4242)
    assert create_step("waiting for cloud-init (watch it: qumran console qbc1q)") == (
        "waiting",
        None,
    )
    assert create_step("qbc1q is ready after 61 s: qumran ssh qbc1q") == ("ready", None)
    assert create_step("something else") is None
    assert forwarded_port("VM qbc1q defined; SSH forwarded from 127.0.0.1:4022") == 4022
    assert forwarded_port("VM qbc1q started (pid 4242)") is None


def test_console_marks() -> None:
    line = b"[ 46.2] cloud-init[505]: Cloud-init v. 22.4.2 finished at Sat, 05 Dec 2026\n"
    assert scan(b"partial", dict(MARKS)) == []
    assert set(scan(b"debian login: " + line, dict(MARKS))) == {
        "console",
        "login_prompt",
        "cloud_init_done",
    }
    assert scan(b"Cloud-init v. 22.4.2 running 'init'\n", {"c": MARKS["cloud_init_done"]}) == []


def test_virt_install_is_the_qumran_machine_and_network() -> None:
    argv = virt_install_argv(
        "qbc1l", Path("/b/d.qcow2"), Path("/b/s.iso"), Path("/b/s.log"), 4022, "52:54:00:aa:bb:cc"
    )
    joined = " ".join(argv)
    for part in ("--machine q35", "--virt-type qemu", "--cpu mode=maximum", "--memory 1024",
                 "--vcpus 2", "--import", "--network none", "--noautoconsole",
                 "path=/b/s.iso,device=disk,format=raw,bus=virtio,readonly=on"):  # fmt: skip
        assert part in joined
    # One argument, with "=": argparse would read "-netdev" as an option of its own.
    assert (
        "--qemu-commandline=-netdev user,id=net0,hostfwd=tcp:127.0.0.1:4022-:22 -device "
        "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,id=virtio-net0,bus=pcie.0,addr=0x10"
    ) in argv
    assert ssh_argv(Path("/b/key"), 4022)[-2:] == ["debian@127.0.0.1", "true"]


def test_report_ratio_and_target() -> None:
    res = CreateResults()
    res.runs = {
        "qumran": [{"ssh": 60.0, "started": 1.0}, {"ssh": 70.0, "started": 1.2}],
        "libvirt": [{"ssh": 80.0, "started": 0.5}, {"ssh": 60.0, "started": 0.7}],
    }
    text = render(res)
    first = next(line for line in text.splitlines() if line.startswith("| command → first"))
    assert "n=2/2" in first
    assert first.endswith(
        "| 65.0 s (60.0\u201370.0) | 70.0 s (60.0\u201380.0) | 0.93 | qumran ≤ libvirt | ✓ |"
    )
    assert "| 1.10 s (1.00\u20131.20) | 0.60 s (0.50\u20130.70) | 1.83 |" in text
    res.runs["libvirt"] = []
    res.errors["libvirt"] = "BenchError: no virt-install"
    assert "n/a (BenchError: no virt-install)" in render(res)


def test_write_between_keeps_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# B\n\n<!-- other:begin -->\nx\n<!-- other:end -->\n")
    write_between(path, BEGIN, END, "one\n")
    write_between(path, BEGIN, END, "two\n")
    assert path.read_text() == (
        f"# B\n\n<!-- other:begin -->\nx\n<!-- other:end -->\n\n{BEGIN}\ntwo\n{END}\n"
    )


def test_image_build_phase_lines() -> None:
    assert phase_of("[2/5] making the root file system") == "making the root file system"
    assert phase_of("[1/5] bootstrapping Debian 12 (mmdebstrap): 25%") is None
    assert phase_of("built debian-12 (3:12)") is None

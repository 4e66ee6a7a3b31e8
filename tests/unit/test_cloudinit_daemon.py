"""A real qumrand (fake driver) builds a VM's cloud-init seed at each start.

The seed is written into the VM's run directory (the daemon's alone) and handed to the
VM process as an open read-only fd; it is made anew at each start, so an edited section
reaches the next boot, and an unchanged one keeps its instance id. A ``user_data`` file
is read with the owner's rights: real second users (useradd) show that a file they may
not read gets the same answer as one that does not exist, at define and at start.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from daemon_harness import Daemon, system_user
from qumran.config.spec import VmSpec
from qumran.drivers.base import Owner
from qumran.drivers.native.driver import NativeDriver
from qumran.drivers.qemu.accel import AccelChoice
from qumran.drivers.qemu.ports import check_ports
from qumran.errors import InvalidArgument

QUMRAN = str(Path(sys.executable).parent / "qumran")
USERS = ("qumran-t1", "qumran-t2")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="creates users; needs root")


@pytest.fixture(scope="module")
def users() -> dict[str, pwd.struct_passwd]:
    return {name: system_user(name) for name in USERS}


def definition(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}, **fields}


def qumran(daemon: Daemon, user: pwd.struct_passwd | None, *args: str) -> tuple[int, str]:
    env = {"QUMRAN_SOCKET": daemon.socket, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    if "PYTHONPATH" in os.environ:  # a source checkout under test
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    kwargs: dict[str, Any] = {}
    if user is not None:
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
    proc = subprocess.run(
        [QUMRAN, *args], capture_output=True, text=True, env=env, timeout=60, **kwargs
    )
    return proc.returncode, proc.stderr.strip()


def seed_dir(daemon: Daemon, name: str) -> Path:
    uuid = daemon.vm(name)["uuid"]
    return daemon.root / "run" / "vms" / uuid[:13]


def read_seed(path: Path) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        files = {}
        for name in ("meta-data", "user-data", "network-config"):
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            files[name] = out.getvalue()
        return files
    finally:
        iso.close()


def instance_id(files: dict[str, bytes]) -> str:
    return str(yaml.safe_load(files["meta-data"])["instance-id"])


def start(daemon: Daemon, name: str) -> int:
    response = daemon.call("POST", f"/v1/vms/{name}/start")
    assert response.status_code == 200, response.text
    return int(response.json()["pid"])


def destroy(daemon: Daemon, name: str) -> None:
    assert daemon.call("POST", f"/v1/vms/{name}/destroy").status_code == 200


def test_each_start_writes_the_seed_and_hands_it_to_the_vm_read_only(
    fake_daemon: Daemon,
) -> None:
    section = {"hostname": "web-a", "runcmd": ["echo one"]}
    body = definition("web", cloud_init=section)
    assert fake_daemon.call("POST", "/v1/vms", json=body).status_code == 201
    pid = start(fake_daemon, "web")

    seed = seed_dir(fake_daemon, "web") / "seed.iso"
    st = seed.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()  # the daemon's, in its own directory
    files = read_seed(seed)
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "web-a"
    assert yaml.safe_load(files["user-data"])["runcmd"] == ["echo one"]
    first = instance_id(files)

    # The VM process holds the very file, read-only, as an inherited fd.
    held = [
        fd
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}") == str(seed)
    ]
    assert len(held) == 1
    flags = int(Path(f"/proc/{pid}/fdinfo/{held[0]}").read_text().split("flags:")[1].split()[0], 8)
    assert flags & os.O_ACCMODE == os.O_RDONLY

    # A restart with the same section: the same instance id (no first boot again).
    destroy(fake_daemon, "web")
    start(fake_daemon, "web")
    assert instance_id(read_seed(seed)) == first

    # An edited section reaches the next start, with a new instance id.
    edited = definition("web", cloud_init={**section, "hostname": "web-b"})
    assert fake_daemon.call("PUT", "/v1/vms/web/definition", json=edited).status_code == 200
    destroy(fake_daemon, "web")
    start(fake_daemon, "web")
    files = read_seed(seed)
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "web-b"
    assert instance_id(files) != first
    destroy(fake_daemon, "web")


def test_a_vm_without_a_section_gets_no_seed(fake_daemon: Daemon) -> None:
    assert fake_daemon.call("POST", "/v1/vms", json=definition("plain")).status_code == 201
    start(fake_daemon, "plain")
    assert not (seed_dir(fake_daemon, "plain") / "seed.iso").exists()
    destroy(fake_daemon, "plain")


def test_a_bad_section_is_one_400_naming_the_field(fake_daemon: Daemon) -> None:
    body = definition("bad", cloud_init={"users": [{"name": "Bob"}]})
    response = fake_daemon.call("POST", "/v1/vms", json=body)
    assert response.status_code == 400
    assert "cloud_init.users[0].name: 'Bob' is not a Linux user name" in response.text


@root_only
def test_user_data_is_read_with_the_owners_rights(
    fake_daemon: Daemon, users: dict[str, pwd.struct_passwd], daemon_root: Path
) -> None:
    t1, t2 = users["qumran-t1"], users["qumran-t2"]
    mine = daemon_root / "t1-user-data"
    mine.write_bytes(b"#!/bin/sh\necho from t1\n")
    os.chown(mine, t1.pw_uid, t1.pw_gid)
    mine.chmod(0o600)
    root_file = daemon_root / "root-user-data"
    root_file.write_text("#cloud-config\n")
    root_file.chmod(0o600)
    home = daemon_root / "t2-home"
    home.mkdir(mode=0o700)
    os.chown(home, t2.pw_uid, t2.pw_gid)
    theirs = home / "user-data"
    theirs.write_text("#cloud-config\n")
    os.chown(theirs, t2.pw_uid, t2.pw_gid)

    def define_as(user: pwd.struct_passwd | None, name: str, user_data: Path) -> tuple[int, str]:
        path = daemon_root / f"{name}.json"
        path.write_text(json.dumps(definition(name, cloud_init={"user_data": str(user_data)})))
        path.chmod(0o644)
        return qumran(fake_daemon, user, "define", str(path))

    answers = []
    for i, path in enumerate((root_file, theirs, daemon_root / "missing", home / "missing")):
        status, err = define_as(t1, f"t1-{i}", path)
        assert status == 1
        answers.append(err.replace(str(path), "PATH"))
    assert answers == [
        f"error: cloud_init.user_data: PATH cannot be opened by uid {t1.pw_uid} (missing, or no "
        f"permission); check the path, and that uid {t1.pw_uid} may read it"
    ] * 4  # fmt: skip

    # t1's own file: defined, and its bytes are the seed's user-data, as they are.
    assert define_as(t1, "t1vm", mine) == (0, "")
    assert qumran(fake_daemon, t1, "start", "t1vm") == (0, "")
    assert read_seed(seed_dir(fake_daemon, "t1vm") / "seed.iso")["user-data"] == (
        b"#!/bin/sh\necho from t1\n"
    )
    assert qumran(fake_daemon, t1, "destroy", "t1vm")[0] == 0

    # Swapped for a link to a file only root may read: the next start is refused, as t1.
    mine.unlink()
    os.symlink(root_file, mine)
    status, err = qumran(fake_daemon, t1, "start", "t1vm")
    assert status == 1
    assert err.startswith(f"error: cloud_init.user_data: {mine} cannot be opened by uid")
    assert fake_daemon.vm("t1vm")["state"] == "shutoff"


def test_the_native_driver_takes_the_seed_and_checks_its_user_data(tmp_path: Path) -> None:
    """qumran-vmm gets the seed as a read-only disk (its command line: test_native_driver);
    a ``user_data`` file the owner cannot read is refused at define, naming the field."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 64)
    driver = NativeDriver("qumran-vmm", probe=lambda: AccelChoice("kvm", "KVM: test"))
    owner = Owner(os.getuid(), os.getgid())
    spec = VmSpec.model_validate(
        definition("n", hypervisor="native", boot={"kernel": str(kernel)}, cloud_init={})
    )
    driver.check(spec, owner)
    missing = tmp_path / "user-data"
    spec = VmSpec.model_validate(definition(
        "n", hypervisor="native", boot={"kernel": str(kernel)},
        cloud_init={"user_data": str(missing)},
    ))  # fmt: skip
    with pytest.raises(InvalidArgument, match=rf"^cloud_init.user_data: {missing} cannot be"):
        driver.check(spec, owner)


@pytest.mark.parametrize(("uid", "port", "refused"), [(1000, 80, True), (1000, 1024, False)])
def test_a_host_port_only_root_may_bind_is_refused_for_another_owner(
    tmp_path: Path, uid: int, port: int, refused: bool
) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("1024\n")
    spec = VmSpec.model_validate(definition("p", nics=[{"forward": [f"tcp::{port}-:80"]}]))
    if os.geteuid() != 0:
        uid = os.geteuid()  # a per-user daemon's QEMU runs as the daemon's user
    if not refused:
        check_ports(spec, Owner(uid, uid), sysctl)
        return
    with pytest.raises(InvalidArgument) as info:
        check_ports(spec, Owner(uid, uid), sysctl)
    assert info.value.message == (
        f"nics[0].forward: 'tcp::80-:80' forwards host port 80, but QEMU runs as uid {uid} "
        "and only root may bind ports below 1024 (net.ipv4.ip_unprivileged_port_start); "
        "use a port from 1024 up"
    )


def test_root_owner_may_forward_a_low_port(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("1024\n")
    spec = VmSpec.model_validate(definition("p", nics=[{"forward": ["tcp::80-:80"]}]))
    if os.geteuid() != 0:
        pytest.skip("only a root daemon runs QEMU as root")
    check_ports(spec, Owner(0, 0), sysctl)


def test_qumrand_gives_the_guest_a_host_key_clients_know_beforehand(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    """The key is made at define (the API shows its public half before any boot), goes
    into the seed's user-data as the guest's only host key, stays the same across starts
    and edits, and is forgotten with the VM."""
    section = {"users": [{"name": "debian"}]}
    made = fake_daemon.call("POST", "/v1/vms", json=definition("keyed", cloud_init=section))
    assert made.status_code == 201, made.text
    keys = made.json()["ssh_host_keys"]
    assert len(keys) == 1 and keys[0].startswith("ssh-ed25519 ")

    start(fake_daemon, "keyed")
    config = yaml.safe_load(read_seed(seed_dir(fake_daemon, "keyed") / "seed.iso")["user-data"])
    assert config["ssh_genkeytypes"] == []
    assert config["ssh_keys"]["ed25519_public"] == keys[0] + "\n"
    private = tmp_path / "key"
    private.write_text(config["ssh_keys"]["ed25519_private"])
    private.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert derived.split()[:2] == keys[0].split()  # the private half of that very key
    destroy(fake_daemon, "keyed")

    edited = definition("keyed", cloud_init={"users": [{"name": "debian"}], "runcmd": ["true"]})
    assert fake_daemon.call("PUT", "/v1/vms/keyed/definition", json=edited).status_code == 200
    start(fake_daemon, "keyed")
    assert fake_daemon.vm("keyed")["ssh_host_keys"] == keys
    destroy(fake_daemon, "keyed")

    fake_daemon.restart()
    assert fake_daemon.vm("keyed")["ssh_host_keys"] == keys  # kept in the store
    assert fake_daemon.call("DELETE", "/v1/vms/keyed").status_code == 204
    again = fake_daemon.call("POST", "/v1/vms", json=definition("keyed", cloud_init=section))
    assert again.json()["ssh_host_keys"] != keys  # a new VM of that name: a new key


def test_no_host_key_without_a_section_or_with_the_users_own_user_data(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    plain = fake_daemon.call("POST", "/v1/vms", json=definition("plain"))
    assert plain.json()["ssh_host_keys"] == []
    own = tmp_path / "user-data"
    own.write_text("#cloud-config\n")
    own.chmod(0o644)
    tmp_path.chmod(0o755)
    theirs = definition("theirs", cloud_init={"user_data": str(own)})
    made = fake_daemon.call("POST", "/v1/vms", json=theirs)
    assert made.status_code == 201, made.text
    assert made.json()["ssh_host_keys"] == []
    start(fake_daemon, "theirs")
    assert read_seed(seed_dir(fake_daemon, "theirs") / "seed.iso")["user-data"] == (
        b"#cloud-config\n"
    )  # passed through untouched
    destroy(fake_daemon, "theirs")

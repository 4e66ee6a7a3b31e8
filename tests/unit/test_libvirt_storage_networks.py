"""Qumran's pools, volumes and networks through Debian's virsh against a real qumrand: the
same objects, the same rules (two real users) as on the HTTP API."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from daemon_harness import Daemon, system_user
from libvirt_clients import client_env, ok, uri, virsh


def names(text: str) -> list[str]:
    """The first column of a virsh table."""
    return [line.split()[0] for line in text.splitlines()[2:] if line.strip()]


def xml_file(root: Path, name: str, text: str) -> str:
    path = root / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def test_pools_and_volumes(fake_daemon: Daemon, daemon_root: Path) -> None:
    assert names(ok(fake_daemon, "pool-list", "--all")) == ["default"]  # made on first use
    info = ok(fake_daemon, "pool-info", "default")
    assert "State:          running" in info and "Autostart:      yes" in info
    default = fake_daemon.call("GET", "/v1/pools/default").json()
    assert f"<path>{default['path']}</path>" in ok(fake_daemon, "pool-dumpxml", "default")

    fast = daemon_root / "fast"
    fast.mkdir()
    ok(fake_daemon, "pool-define-as", "fast", "dir", "--target", str(fast))
    assert fake_daemon.call("GET", "/v1/pools/fast").json()["path"] == str(fast)
    assert names(ok(fake_daemon, "pool-list", "--all")) == ["default", "fast"]
    xml = ok(fake_daemon, "pool-dumpxml", "fast")
    ok(fake_daemon, "pool-undefine", "fast")
    ok(fake_daemon, "pool-define", xml_file(daemon_root, "fast.xml", xml))  # the round trip
    assert names(ok(fake_daemon, "pool-list", "--all")) == ["default", "fast"]

    ok(fake_daemon, "vol-create-as", "fast", "base", "16M", "--format", "qcow2")
    ok(fake_daemon, "vol-create-as", "fast", "raw1", "1M", "--format", "raw")
    ok(fake_daemon, "vol-create-as", "fast", "top", "16M", "--backing-vol", "base",
       "--backing-vol-format", "qcow2")  # fmt: skip
    vols = {v["name"]: v for v in fake_daemon.call("GET", "/v1/pools/fast/volumes").json()}
    assert vols["top"]["backing"] == str(fast / "base") and vols["raw1"]["format"] == "raw"
    assert names(ok(fake_daemon, "vol-list", "fast")) == ["base", "raw1", "top"]
    assert "Capacity:       16.00 MiB" in ok(fake_daemon, "vol-info", "top", "--pool", "fast")
    assert ok(fake_daemon, "vol-path", "top", "--pool", "fast").strip() == str(fast / "top")
    assert ok(fake_daemon, "vol-key", str(fast / "top")).strip() == str(fast / "top")
    ok(fake_daemon, "vol-clone", "top", "top2", "--pool", "fast")  # an overlay stays one
    assert "<path>" + str(fast / "base") in ok(fake_daemon, "vol-dumpxml", "top2", "--pool", "fast")
    ok(fake_daemon, "vol-resize", "raw1", "2M", "--pool", "fast")
    assert fake_daemon.call("GET", "/v1/pools/fast/volumes/raw1").json()["capacity"] == 2 << 20
    ok(fake_daemon, "vol-delete", "top2", "--pool", "fast")

    # Qumran's refusals, one line each, nothing changed.
    for args, why in (
        (("vol-delete", "base", "--pool", "fast"), "is the backing file of volume 'top'"),
        (("vol-resize", "raw1", "1M", "--pool", "fast", "--shrink"), "only grow"),
        (("pool-destroy", "fast"), "Qumran's pools are not stopped"),
        (("pool-start", "fast"), "is already active"),
        (("vol-info", "nosuch", "--pool", "fast"), "Storage volume not found"),
        (("pool-info", "nosuch"), "Storage pool not found"),
        (("pool-define-as", "net", "netfs", "--source-host", "h", "--source-path", "/x",
          "--target", "/mnt"), "pool@type='netfs': Qumran supports only dir"),
    ):  # fmt: skip
        proc = virsh(fake_daemon, *args)
        assert proc.returncode == 1, args
        assert why in proc.stderr, (args, proc.stderr)
    assert names(ok(fake_daemon, "vol-list", "fast")) == ["base", "raw1", "top"]


def test_networks(fake_daemon: Daemon, daemon_root: Path) -> None:
    lan = xml_file(daemon_root, "lan.xml", """
        <network>
          <name>lan</name>
          <metadata>
            <qumran:network xmlns:qumran="https://qumran.dev/xmlns/libvirt/network/1.0"
                            type="user" shared="yes"/>
          </metadata>
        </network>""")
    assert names(ok(fake_daemon, "net-list", "--all")) == []
    ok(fake_daemon, "net-define", lan)
    got = fake_daemon.call("GET", "/v1/networks/lan").json()
    assert (got["type"], got["shared"], got["active"]) == ("user", True, False)
    xml = ok(fake_daemon, "net-dumpxml", "lan")
    assert 'type="user"' in xml and 'shared="yes"' in xml
    ok(fake_daemon, "net-start", "lan")
    assert names(ok(fake_daemon, "net-list")) == ["lan"]
    ok(fake_daemon, "net-autostart", "lan")
    assert fake_daemon.call("GET", "/v1/networks/lan").json()["autostart"] is True
    assert "Autostart:      yes" in ok(fake_daemon, "net-info", "lan")
    proc = virsh(fake_daemon, "net-undefine", "lan")
    assert proc.returncode == 1 and "is active; stop it first" in proc.stderr
    ok(fake_daemon, "net-destroy", "lan")
    ok(fake_daemon, "net-undefine", "lan")
    ok(fake_daemon, "net-define", xml_file(daemon_root, "again.xml", xml))  # the round trip
    assert fake_daemon.call("GET", "/v1/networks/lan").json()["definition"] == got["definition"]

    bad = xml_file(daemon_root, "bad.xml", "<network><name>r</name><forward mode='route'/>"
                   "</network>")  # fmt: skip
    proc = virsh(fake_daemon, "net-define", bad)
    assert proc.returncode == 1
    assert "network/forward@mode='route': Qumran supports only bridge, nat" in proc.stderr
    proc = virsh(fake_daemon, "net-info", "nosuch")
    assert proc.returncode == 1 and "Network not found" in proc.stderr


def test_two_users_see_their_own_pools_and_the_shared_networks(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("creates users; needs root")
    t1, t2 = system_user("qumran-t1"), system_user("qumran-t2")
    pools = {}
    for user in (t1, t2):
        path = daemon_root / f"pool-{user.pw_name}"
        path.mkdir()
        os.chown(path, user.pw_uid, user.pw_gid)
        pools[user.pw_uid] = path
        proc = virsh(fake_daemon, "pool-define-as", "mine", "dir", "--target", str(path),
                     user=user)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    ok(fake_daemon, "net-define", xml_file(daemon_root, "open.xml", """<network><name>open</name>
        <metadata><qumran:network xmlns:qumran="https://qumran.dev/xmlns/libvirt/network/1.0"
        type="user" shared="yes"/></metadata></network>"""))
    ok(fake_daemon, "net-define", xml_file(daemon_root, "priv.xml", """<network><name>priv</name>
        <metadata><qumran:network xmlns:qumran="https://qumran.dev/xmlns/libvirt/network/1.0"
        type="user"/></metadata></network>"""))

    def listed(user: pwd.struct_passwd | None, *args: str) -> list[str]:
        proc = virsh(fake_daemon, *args, user=user)
        assert proc.returncode == 0, proc.stderr
        return names(proc.stdout)

    # Each user: their own pools by their names; root: others' as NAME@UID.
    assert "mine" in listed(t1, "pool-list", "--all")
    assert f"mine@{t1.pw_uid}" not in listed(t1, "pool-list", "--all")
    assert {f"mine@{t1.pw_uid}", f"mine@{t2.pw_uid}"} <= set(listed(None, "pool-list", "--all"))
    proc = virsh(fake_daemon, "vol-create-as", "mine", "disk", "1M", user=t1)
    assert proc.returncode == 0, proc.stderr
    assert (pools[t1.pw_uid] / "disk").stat().st_uid == t1.pw_uid  # made as its owner
    assert listed(t2, "vol-list", "mine") == []  # t2's own "mine"
    assert listed(None, "vol-list", f"mine@{t1.pw_uid}") == ["disk"]  # root sees t1's
    # Another user's pool is not there for t2, whatever it is called.
    for name in (f"mine@{t1.pw_uid}",):
        proc = virsh(fake_daemon, "vol-list", name, user=t2)
        assert proc.returncode == 1
    proc = virsh(fake_daemon, "vol-info", str(pools[t1.pw_uid] / "disk"), user=t2)
    assert proc.returncode == 1 and "not found" in proc.stderr
    # Networks: a user sees the shared one only, and may not change it.
    assert listed(t1, "net-list", "--all") == ["open"]
    assert listed(None, "net-list", "--all") == ["open", "priv"]
    proc = virsh(fake_daemon, "net-start", "open", user=t1)
    assert proc.returncode == 1 and "only root may start networks" in proc.stderr
    proc = virsh(fake_daemon, "net-dumpxml", "priv", user=t1)
    assert proc.returncode == 1 and "failed to get network 'priv'" in proc.stderr


PYTHON_STORAGE = """
import libvirt, sys
conn = libvirt.open(sys.argv[1])
pool = conn.storagePoolLookupByName("default")
print("pool", pool.name(), pool.isActive(), pool.info()[0] == libvirt.VIR_STORAGE_POOL_RUNNING)
vol = pool.createXML("<volume><name>v1</name><capacity unit='M'>4</capacity>"
                     "<target><format type='qcow2'/></target></volume>", 0)
print("vol", vol.name(), vol.info()[1], conn.storageVolLookupByPath(vol.path()).name())
print("pools", [p.name() for p in conn.listAllStoragePools(0)])
print("nets", [n.name() for n in conn.listAllNetworks(0)])
vol.delete(0)
print("after", pool.listVolumes())
"""


def test_python3_libvirt_storage(fake_daemon: Daemon) -> None:
    proc = subprocess.run(["/usr/bin/python3", "-c", PYTHON_STORAGE, uri(fake_daemon)],
                          capture_output=True, text=True, timeout=60, env=client_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "pool default 1 True", f"vol v1 {4 << 20} v1", "pools ['default']", "nets []",
        "after []",
    ]  # fmt: skip

"""The Storage page and the Create form's "From an image" mode, in-process against a
Manager with the fake driver and real storage (qemu-img, pools as their owners).

Root's pool is in the test's state folder; the two real users (made with useradd, each
with a home of their own in a temporary folder) have theirs in their homes, made with
their own rights, as qumrand makes them. Refusals are the daemon's own words on the page.
The fixtures are test_web_app.py's: one Manager, sessions bound to uids.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import test_web_app
from test_web_app import ME, User, Web

from daemon_harness import remove_tmpdir, short_tmpdir
from qumran.daemon.manager import Caller

web = test_web_app.web  # the fixture: one Manager with the fake driver, its web app

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
USERS = ("qumran-web-t1", "qumran-web-t2")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBA8mOBRcChyI3GK2wtFIEt2QahBIOHADPL5wK5D3fjh t1@host"
MiB = 1 << 20


def run(web: Web, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return web.client.portal.call(lambda: fn(*args, **kwargs))  # type: ignore[union-attr]


def post(web: Web, user: User, path: str, /, **fields: str) -> Any:
    """A form as the browser posts it (no Accept: JSON), with the session's CSRF token."""
    return web.client.post(path, data={"csrf": user.csrf, **fields}, headers=user.cookie,
                           follow_redirects=False)  # fmt: skip


def volumes(web: Web, uid: int, pool: str = "default") -> dict[str, Any]:
    found = run(web, web.manager.storage.volumes, Caller(uid, uid), pool)
    return {v["name"]: v for v in found}


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr data-volume="{re.escape(name)}".*?</tr>', html, re.S)
    assert found, name
    return found.group(0)


def refusal(html: str) -> str:
    found = re.search(r'<div class="error" id="form-error" role="alert"><strong>[^<]*</strong> '
                      r"(.*?)</div>", html, re.S)  # fmt: skip
    assert found, html[-2000:]
    return unescape(found.group(1))


# the storage page, as root: its own pool, and every action
def test_volumes_are_created_listed_cloned_resized_and_deleted(web: Web) -> None:
    me = web.login(ME)
    page = web.get(me, "/storage")
    assert page.status_code == 200
    assert '<a href="/storage">Storage</a>' in page.text  # in the top bar
    pool_dir = Path(web.manager.store.path).parent / "pools/default"
    assert f"<small>{pool_dir}</small>" in page.text
    assert "No volumes in this pool yet." in page.text

    created = post(web, me, "/storage/volumes", pool=f"{ME}/default", name="data", size="64M",
                   format="raw", backing="")  # fmt: skip
    assert created.status_code == 303 and created.headers["location"] == "/storage"
    vol = volumes(web, ME)["data"]
    assert (vol["format"], vol["capacity"], vol["backing"]) == ("raw", 64 * MiB, None)
    row = row_of(web.get(me, "/storage").text, "data")
    assert "<td>raw</td>" in row and '<td data-field="capacity">64 MiB</td>' in row
    assert f'action="/storage/volumes/{ME}/default/data/delete"' in row

    assert post(web, me, f"/storage/volumes/{ME}/default/data/clone", new="copy").status_code == 303
    assert volumes(web, ME)["copy"]["capacity"] == 64 * MiB
    assert post(web, me, f"/storage/volumes/{ME}/default/copy/resize",
                size="128M").status_code == 303  # fmt: skip
    assert volumes(web, ME)["copy"]["capacity"] == 128 * MiB
    assert post(web, me, f"/storage/volumes/{ME}/default/copy/delete").status_code == 303
    assert "copy" not in volumes(web, ME)

    over = post(web, me, "/storage/volumes", pool=f"{ME}/default", name="over", size="64",
                format="qcow2", backing="data")  # fmt: skip
    assert over.status_code == 303, refusal(over.text)
    assert volumes(web, ME)["over"]["backing"] == str(pool_dir / "data")
    assert "volume data" in row_of(web.get(me, "/storage").text, "over")  # as a person knows it


def test_refusals_are_the_daemons_words_and_change_nothing(web: Web) -> None:
    me, who = web.login(ME), Caller(ME, ME)
    run(web, web.manager.storage.create_volume, who, "base", 32 * MiB)
    run(web, web.manager.storage.create_volume, who, "disk", 32 * MiB, backing="base")
    run(web, web.manager.define, who, {"name": "v", "memory": 64, "boot": {"disk": 0},
                                       "disks": [{"volume": "disk"}]})  # fmt: skip
    cases = [
        (f"/storage/volumes/{ME}/default/disk/delete", {}, 409,
         "volume 'disk' is used by VM 'v'; it cannot be deleted while that VM is defined with "
         "it (undefine it, or `qumran edit` its disks)"),
        (f"/storage/volumes/{ME}/default/base/delete", {}, 409,
         "volume 'base' is the backing file of volume 'disk'; delete 'disk' first"),
        (f"/storage/volumes/{ME}/default/base/resize", {"size": "16M"}, 400,
         "size: 16777216 bytes is less than volume 'base''s 33554432: shrinking would cut off "
         "the end of the disk; volumes only grow"),
        ("/storage/volumes", {"pool": f"{ME}/default", "name": "x", "size": "lots"}, 400,
         "size: "),
        ("/storage/volumes", {"pool": f"{ME}/default", "name": "../x", "size": "1M"}, 400,
         "name: '../x' has a '/'"),
        ("/storage/volumes", {"pool": f"{ME}/default", "name": "base", "size": "1M"}, 409,
         "base"),
        (f"/storage/pools/{ME}/default/undefine", {}, 409,
         "the default pool cannot be undefined (it is made again on use)"),
        ("/storage/volumes/me/default/base/delete", {}, 400, "owner: 'me' is not a uid"),
        (f"/storage/volumes/{ME}/default/base/shred", {}, 400, "unknown action 'shred'"),
        ("/storage/pools", {"name": "p", "path": "relative"}, 400,
         "path: 'relative' is not absolute; give the pool's full path"),
    ]  # fmt: skip
    for path, fields, status, words in cases:
        response = post(web, me, path, **fields)
        assert response.status_code == status, (path, response.text[-800:])
        shown = refusal(response.text)
        assert shown.startswith(words) if words.endswith(": ") else words in shown, (path, shown)
        assert "Traceback" not in response.text
    assert sorted(volumes(web, ME)) == ["base", "disk"]
    assert volumes(web, ME)["base"]["capacity"] == 32 * MiB
    assert volumes(web, ME)["disk"]["used_by"] == ["v"]
    row = row_of(web.get(me, "/storage").text, "disk")
    assert '<a href="/vms/v">v</a>' in row  # used by, linked

    forged = web.client.post(f"/storage/volumes/{ME}/default/base/delete", data={"csrf": "x"},
                             headers=me.cookie)  # fmt: skip
    assert forged.status_code == 403 and "base" in volumes(web, ME)
    assert web.get(None, "/storage").status_code == 401


def test_a_pool_is_defined_listed_and_undefined(web: Web, tmp_path: Path) -> None:
    me = web.login(ME)
    where = tmp_path / "fast"
    where.mkdir()
    assert post(web, me, "/storage/pools", name="fast", path=str(where)).status_code == 303
    page = web.get(me, "/storage").text
    assert f"<h2>Pool fast <small>{where}</small></h2>" in page
    assert f'value="{ME}/fast"' in page  # offered for new volumes
    assert post(web, me, "/storage/volumes", pool=f"{ME}/fast", name="f1",
                size="8M").status_code == 303  # fmt: skip
    assert (where / "f1").is_file()
    assert post(web, me, f"/storage/pools/{ME}/fast/undefine").status_code == 303
    assert "Pool fast" not in web.get(me, "/storage").text
    assert (where / "f1").is_file()  # undefining forgets; the files stay


# two real users
@pytest.fixture
def people() -> Iterator[list[pwd.struct_passwd]]:
    """Two real users, each with a fresh home (mode 0700) of their own."""
    if os.geteuid() != 0:
        pytest.skip("creates users; needs root")
    base = short_tmpdir()
    found = []
    for name in USERS:
        home = base / name
        try:
            pwd.getpwnam(name)
            subprocess.run(["usermod", "--home", str(home), name], check=True)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(home),
                            name], check=True)  # fmt: skip
        user = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, user.pw_uid, user.pw_gid)
        found.append(user)
    yield found
    remove_tmpdir(base)


def as_user(user: pwd.struct_passwd, *argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, user=user.pw_uid,
                   group=user.pw_gid, extra_groups=[], cwd="/", umask=0o077)  # fmt: skip


def test_each_user_sees_and_touches_only_their_own_volumes(
    web: Web, people: list[pwd.struct_passwd]
) -> None:
    t1, t2 = people
    one, two, root = web.login(t1.pw_uid), web.login(t2.pw_uid), web.login(ME)
    made = post(web, one, "/storage/volumes", pool=f"{t1.pw_uid}/default", name="secret",
                size="8M", format="qcow2")  # fmt: skip
    assert made.status_code == 303, refusal(made.text)
    path = Path(t1.pw_dir) / ".local/share/qumran/pools/default/secret"
    assert path.stat().st_uid == t1.pw_uid  # made as its owner

    assert 'data-volume="secret"' in web.get(one, "/storage").text
    theirs = web.get(two, "/storage").text
    assert "secret" not in theirs and t1.pw_dir not in theirs
    assert "uid" not in re.sub(r'<span class="who">uid \d+</span>', "", theirs)  # no owners
    assert "secret" not in web.get(two, "/vms/new").text  # nor in the disk picker
    assert "volume:secret" in web.get(one, "/vms/new").text
    for action, fields in (("delete", {}), ("resize", {"size": "16M"}),
                           ("clone", {"new": "mine"})):  # fmt: skip
        response = post(web, two, f"/storage/volumes/{t1.pw_uid}/default/secret/{action}",
                        **fields)  # fmt: skip
        assert response.status_code == 403, action
        assert refusal(response.text) == "owner: only root may use another user's pools"
    assert path.is_file() and volumes(web, t1.pw_uid)["secret"]["capacity"] == 8 * MiB
    # Named as their own pool's volume, it is simply not there.
    response = post(web, two, f"/storage/volumes/{t2.pw_uid}/default/secret/delete")
    assert response.status_code == 404 and "secret" in refusal(response.text)

    everyone = web.get(root, "/storage").text  # root: everyone's, with owners
    assert f"owner uid {t1.pw_uid}" in everyone and 'data-volume="secret"' in everyone
    assert post(web, root, f"/storage/volumes/{t1.pw_uid}/default/secret/delete").status_code == 303
    assert not path.exists()


# the Create form, "From an image"
@pytest.fixture
def imager(people: list[pwd.struct_passwd]) -> pwd.struct_passwd:
    """t1 with a disk image in their cache, as `qumran image import tiny FILE` leaves it,
    and an SSH key of their own."""
    user = people[0]
    entry = Path(user.pw_dir) / ".cache/qumran/images/tiny"
    ssh = Path(user.pw_dir) / ".ssh"
    as_user(user, "mkdir", "-p", str(entry), str(ssh))
    as_user(user, "qemu-img", "create", "-q", "-f", "raw", str(entry / "disk.raw"), "16M")
    info = {"name": "tiny", "disk": "disk.raw", "format": "raw", "virtual_size": 16 * MiB,
            "digest": "0" * 64, "created": "2026-01-01T00:00:00+00:00", "source": "imported",
            "version": 1}  # fmt: skip
    for path, text in ((entry / "image.json", json.dumps(info)),
                       (ssh / "id_ed25519.pub", KEY + "\n")):  # fmt: skip
        path.write_text(text)
        os.chown(path, user.pw_uid, user.pw_gid)
    return user


def create_form(user: User, **fields: str) -> dict[str, str]:
    return {"mode": "image", "name": "web1", "memory": "1G", "vcpus": "2",
            "disk_image": "tiny", "disk_size": "64M", "user": "debian", "ssh_key": KEY,
            "serial": "on"} | fields  # fmt: skip


def test_the_form_offers_disk_images_and_the_users_own_key(
    web: Web, imager: pwd.struct_passwd
) -> None:
    form = web.get(web.login(imager.pw_uid), "/vms/new").text
    assert re.search(r'name="mode" value="image" checked', form)
    assert re.search(r'<option value="tiny" data-size="8G" selected>tiny \(raw, 16 MiB, ', form)
    assert f">{KEY}</textarea>" in form  # read from their ~/.ssh, with their rights
    assert 'name="disk_size" id="disk-size" value="8G"' in form
    assert 'id="memory" value="1G"' in form
    nobody = web.get(web.login(2001), "/vms/new").text  # no account: nothing offered
    assert re.search(r'name="mode" value="custom" checked', nobody)
    assert 'id="no-disk-images"' in nobody
    assert "</textarea>" in nobody and KEY not in nobody


def test_from_an_image_makes_an_overlay_volume_and_the_definition(
    web: Web, imager: pwd.struct_passwd
) -> None:
    t1 = web.login(imager.pw_uid)
    response = post(web, t1, "/vms", **create_form(t1))  # "start" unticked: only defined
    assert response.status_code == 303, refusal(response.text)
    assert response.headers["location"] == "/vms/web1"
    doc = web.manager.domains["web1"].record.definition
    [nic] = doc["nics"]
    [rule] = nic["forward"]
    port = int(re.fullmatch(r"tcp:127\.0\.0\.1:(\d+)-:22", rule).group(1))  # type: ignore[union-attr]
    assert doc["boot"] == {"disk": 0} and doc["hypervisor"] == "qemu"
    assert doc["disks"] == [{"volume": "web1", "pool": "default", "readonly": False}]
    assert (doc["memory"], doc["vcpus"]) == (1024, 2)
    [user] = doc["cloud_init"]["users"]
    assert (user["name"], user["ssh_authorized_keys"], user["sudo"]) == (
        "debian",
        [KEY],
        "ALL=(ALL) NOPASSWD:ALL",
    )
    vol = volumes(web, imager.pw_uid)["web1"]
    disk = Path(imager.pw_dir) / ".cache/qumran/images/tiny/disk.raw"
    assert (vol["format"], vol["capacity"], vol["backing"], vol["backing_format"]) == (
        "qcow2",
        64 * MiB,
        str(disk),
        "raw",
    )
    assert vol["used_by"] == ["web1"]
    page = web.get(t1, "/vms/web1").text
    assert f"forwarded from 127.0.0.1:{port}" in page and "<code>qumran ssh web1</code>" in page
    assert f'<a href="/storage#vol-{imager.pw_uid}-default-web1">web1</a>' in page
    assert "image tiny" in row_of(web.get(t1, "/storage").text, "web1")


def test_a_refused_definition_makes_no_volume_or_removes_it(
    web: Web, imager: pwd.struct_passwd
) -> None:
    t1 = web.login(imager.pw_uid)
    run(web, web.manager.define, Caller(imager.pw_uid, imager.pw_gid),
        {"name": "taken", "memory": 64, "boot": {"kernel": "/bin/sh"}})  # fmt: skip
    cases = [
        ({"name": "taken"}, 409, "'taken' already exists"),  # refused after the volume
        ({"memory": "1"}, 400, "memory: 1 MiB is too little"),  # refused before it
        ({"ssh_key": "not a key"}, 400, "ssh_authorized_keys"),
        ({"ssh_key": "  "}, 400, "SSH key: paste your SSH public key"),
        ({"disk_size": "huge"}, 400, "disk size: "),
        ({"disk_size": "8M"}, 400, "smaller than the backing image's"),
        ({"disk_image": "nope"}, 400, "disk image: no image named 'nope' in your cache"),
    ]
    for fields, status, words in cases:
        response = post(web, t1, "/vms", **create_form(t1, **fields))
        assert response.status_code == status, (fields, response.text[-600:])
        assert words in refusal(response.text), (fields, refusal(response.text))
        assert 'value="image" checked' in response.text  # the form again, as it was typed
        assert volumes(web, imager.pw_uid) == {}, fields
        assert sorted(web.manager.domains) == ["taken"]


def test_custom_disks_name_volumes_by_the_picker() -> None:
    from qumran.web.forms import definition_from_form

    doc = definition_from_form({"name": "c", "boot": "disk", "disks": "volume:web1 ro\n/a.img",
                                "add_volume": "volume:fast/data"})  # fmt: skip
    assert doc["disks"] == [
        {"volume": "web1", "pool": "default", "readonly": True},
        {"path": "/a.img"},
        {"volume": "data", "pool": "fast"},
    ]


def test_a_volume_disk_from_the_custom_form_is_defined(web: Web) -> None:
    me = web.login(ME)
    run(web, web.manager.storage.create_volume, Caller(ME, ME), "root-disk", 8 * MiB)
    fields = {"mode": "custom", "name": "c", "memory": "64M", "vcpus": "1", "boot": "disk",
              "boot_disk": "0", "add_volume": "volume:root-disk"}  # fmt: skip
    response = post(web, me, "/vms", **fields)
    assert response.status_code == 303, refusal(response.text)
    assert web.manager.domains["c"].record.definition["disks"] == [
        {"volume": "root-disk", "pool": "default", "readonly": False}
    ]
    missing = post(web, me, "/vms", **(fields | {"name": "d", "add_volume": "volume:nope"}))
    assert missing.status_code == 400
    assert "disks[0].volume: no volume 'nope' in pool 'default'" in refusal(missing.text)

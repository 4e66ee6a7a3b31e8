"""The web manager's pages, in-process against a Manager with the fake driver: the list's
actions and columns, the details page of a shut-off and a running VM, the definition
editor, and images offered by the Create form (read with the user's own rights).

The fixtures are test_web_app.py's: one Manager, sessions bound to uids.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import test_web_app
import yaml
from test_web_app import ALICE, BOB, ME, Web

from daemon_harness import remove_tmpdir, short_tmpdir
from qumran.daemon.manager import Caller
from qumran.errors import InvalidState, QumranError
from qumran.web import lifecycle
from qumran.web.definition import line_of, problems
from qumran.web.images import user_images

web = test_web_app.web  # the fixture: one Manager with the fake driver, its web app


def run(web: Web, fn: Any, *args: Any) -> Any:
    return web.client.portal.call(fn, *args)  # type: ignore[union-attr]


def define(web: Web, uid: int, doc: dict[str, Any]) -> None:
    run(web, web.manager.define, Caller(uid, uid), doc)


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr data-vm="{name}".*?</tr>', html, re.S)
    assert found, name
    return found.group(0)


def shown_buttons(html: str) -> tuple[list[str], list[str]]:
    """(primary, menu): the actions of visible buttons, outside and inside the ⋮ menu."""
    slot = re.search(r'<span class="primary-slot">(.*?)</span>', html, re.S)
    menu = re.search(r'<div class="menu-items"[^>]*>(.*?)</div>', html, re.S)
    assert slot and menu

    def visible(part: str) -> list[str]:
        return [a for a, attrs in re.findall(r'data-action="(\w+)"([^>]*)>', part)
                if "hidden" not in attrs]  # fmt: skip

    return visible(slot.group(1)), visible(menu.group(1))


# 12: the list
def test_each_row_has_one_primary_action_and_a_menu_of_the_others(web: Web) -> None:
    me = web.login(ME)
    for name in ("v-off", "v-run", "v-paused"):
        define(
            web, ME, {"name": name, "memory": "1536M", "vcpus": 2, "boot": {"kernel": "/bin/sh"}}
        )
    run(web, web.manager.start, Caller(ME, ME), "v-run")
    run(web, web.manager.start, Caller(ME, ME), "v-paused")
    run(web, web.manager.suspend, Caller(ME, ME), "v-paused")
    html = web.get(me, "/").text
    expected = {
        "v-off": (["start"], ["undefine"]),
        "v-run": (["shutdown"], ["reboot", "suspend", "reset", "destroy"]),
        "v-paused": (["resume"], ["reboot", "reset", "destroy"]),
    }
    for name, (first, others) in expected.items():
        row = row_of(html, name)
        assert shown_buttons(row) == (first, others), name
        assert row.count("<button") == len(lifecycle.ORDER)  # one button per action
        assert f'href="/vms/{name}/edit"' in row
        assert "1.5 GiB" in row and '<td data-field="vcpus">2</td>' in row
        assert 'data-field="addresses"' in row
    assert re.search(r'data-field="uptime">\d+ s<', row_of(html, "v-run"))
    assert 'data-field="uptime"></td>' in row_of(html, "v-off")  # nothing, not "--"
    api = {vm["name"]: vm for vm in web.get(me, "/api/vms").json()}
    assert api["v-run"]["uptime"].endswith(" s") and api["v-off"]["uptime"] == ""


@pytest.mark.parametrize("state", ["shutoff", "running", "paused"])
def test_the_actions_a_state_hides_are_the_ones_the_daemon_refuses(web: Web, state: str) -> None:
    me = Caller(ME, ME)
    define(web, ME, {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    if state != "shutoff":
        run(web, web.manager.start, me, "v")
    if state == "paused":
        run(web, web.manager.suspend, me, "v")
    for action in set(lifecycle.ORDER) - set(lifecycle.valid(state)):
        with pytest.raises(QumranError) as refused:
            run(web, getattr(web.manager, action), me, "v")
        assert isinstance(refused.value, InvalidState), action
        assert web.state("v") == state, action
    assert lifecycle.primary(state) in lifecycle.valid(state)


def test_duration_and_sizes_read_as_people_say_them() -> None:
    assert [lifecycle.duration(s) for s in (0, 59, 60, 3600, 3660, 86400, 90000)] == [
        "0 s", "59 s", "1 min", "1 h", "1 h 1 min", "1 d", "1 d 1 h",
    ]  # fmt: skip
    assert [lifecycle.mebibytes(m) for m in (64, 1024, 1536)] == ["64 MiB", "1 GiB", "1.5 GiB"]


# 11 and 13: the details page
def test_a_shut_off_vm_shows_a_note_not_empty_graphs(web: Web) -> None:
    me = web.login(ME)
    define(web, ME, {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    html = web.get(me, "/vms/v").text
    assert re.search(r'<section class="graphs" id="graphs" hidden>', html)
    off = re.search(r'<div class="stats-off" id="stats-off" ?>(.*?)</div>', html, re.S)
    assert off and "No data while shut off" in off.group(1)
    assert web.get(me, "/api/vms/v/stats").json()["samples"] == []
    run(web, web.manager.start, Caller(ME, ME), "v")
    html = web.get(me, "/vms/v").text
    assert '<section class="graphs" id="graphs" >' in html
    assert 'id="stats-off" hidden' in html


def test_the_stats_of_a_run_leave_out_the_previous_runs(web: Web) -> None:
    me, caller = web.login(ME), Caller(ME, ME)
    define(web, ME, {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    dom = run(web, web.manager.start, caller, "v")
    run(web, web.manager.stats.sample, dom)
    first = web.get(me, "/api/vms/v/stats").json()["samples"]
    assert len(first) == 1
    run(web, web.manager.destroy, caller, "v")
    assert web.get(me, "/api/vms/v/stats").json()["samples"] == []
    run(web, web.manager.start, caller, "v")
    assert web.get(me, "/api/vms/v/stats").json()["samples"] == []


def test_network_words_follow_the_vms_interfaces(web: Web) -> None:
    me = web.login(ME)
    define(web, ME, {"name": "bare", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    define(web, ME, {"name": "nat", "memory": 64, "boot": {"kernel": "/bin/sh"}, "nics": [{}]})
    bare = web.get(me, "/vms/bare").text
    assert "No network interfaces." in bare
    assert "user-mode" not in bare and "counters" not in bare
    assert 'id="g-net"' not in bare
    nat = web.get(me, "/vms/nat").text
    assert 'id="g-net"' in nat and "No network interfaces" not in nat
    assert "user-mode (1 interface)" in nat
    listed = web.get(me, "/").text
    assert "no network" in row_of(listed, "bare") and "user-mode" in row_of(listed, "nat")
    script = web.get(me, "/static/vm.js").text
    assert "Traffic is not measured on user-mode network interfaces" in script
    assert "Network counters are not available" not in script


# 14: the definition as YAML, editable
def test_the_definition_is_shown_and_edited_as_yaml(web: Web) -> None:
    me = web.login(ME)
    doc = {"name": "v", "memory": "1G", "boot": {"kernel": "/bin/sh", "cmdline": "quiet"},
           "nics": [{"mac": "52:54:00:00:00:01"}]}  # fmt: skip
    define(web, ME, doc)
    shown = re.search(
        r'<pre class="definition" id="definition">(.*?)</pre>', web.get(me, "/vms/v").text, re.S
    )
    assert shown and not shown.group(1).lstrip().startswith("{")
    page = web.get(me, "/vms/v/edit")
    assert page.status_code == 200
    text = unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", page.text, re.S).group(1))  # type: ignore[union-attr]
    assert yaml.safe_load(text) == {
        "name": "v", "memory": 1024, "vcpus": 1, "hypervisor": "qemu",
        "boot": {"kernel": "/bin/sh", "cmdline": "quiet"},
        "nics": [{"type": "user", "model": "virtio", "mac": "52:54:00:00:00:01"}],
        "serial": True, "graphics": False,
    }  # fmt: skip
    assert text == unescape(shown.group(1))
    edited = text.replace("memory: 1024", "memory: 2G").replace("vcpus: 1", "vcpus: 2")
    response = web.client.post("/vms/v/edit", data={"csrf": me.csrf, "definition": edited},
                               headers=me.cookie, follow_redirects=False)  # fmt: skip
    assert response.status_code == 303 and response.headers["location"] == "/vms/v?saved=1"
    dom = web.manager.domains["v"]
    assert (dom.spec.memory, dom.spec.vcpus) == (2048, 2)
    assert dom.record.definition["nics"][0]["mac"] == "52:54:00:00:00:01"
    assert "Definition saved." in web.get(me, "/vms/v?saved=1").text


def post_edit(web: Web, user: Any, name: str, text: str, **kwargs: Any) -> Any:
    return web.client.post(f"/vms/{name}/edit", data={"csrf": user.csrf, "definition": text},
                           headers=user.cookie, **kwargs)  # fmt: skip


def problem_lines(html: str) -> list[tuple[int | None, str]]:
    items = re.findall(
        r'<li>(?:<a href="#line-(\d+)"[^>]*>line \d+</a> )?<span>(.*?)</span></li>', html
    )
    return [(int(n) if n else None, unescape(m)) for n, m in items]


def test_an_invalid_edit_shows_each_error_on_its_line_and_changes_nothing(web: Web) -> None:
    me = web.login(ME)
    define(web, ME, {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    before = dict(web.manager.domains["v"].record.definition)
    text = "name: v\nmemory: 1\nvcpus: two\nboot:\n  kernel: relative/vmlinuz\nmemroy: 2\n"
    response = post_edit(web, me, "v", text)
    assert response.status_code == 400
    found = problem_lines(response.text)
    assert (2, "memory: 1 MiB is too little; at least 16 MiB (16M)") in found
    assert any(
        line == 3 and m.startswith("vcpus: Input should be a valid integer") for line, m in found
    )
    assert (5, "boot.kernel: path must be absolute, got 'relative/vmlinuz'") in found
    assert any(line == 6 and m.startswith("memroy: unknown field") for line, m in found)
    assert "relative/vmlinuz" in response.text  # what was typed is kept
    assert web.manager.domains["v"].record.definition == before
    for bad, expected in [
        (
            "name: v\nmemory: &m 64\nvcpus: *m\nboot: {kernel: /bin/sh}\n",
            (2, "anchors and aliases"),
        ),
        (
            "name: v\nmemory: 64\nmemory: 65\nboot: {kernel: /bin/sh}\n",
            (3, "duplicate key 'memory'"),
        ),
        ("name: v\nmemory: [\n", (3, "invalid YAML")),
        ("- just\n- a list\n", (None, "a definition is a mapping")),
        ("name: other\nmemory: 64\nboot: {kernel: /bin/sh}\n", (1, "renaming")),
    ]:
        response = post_edit(web, me, "v", bad)
        assert response.status_code == 400, bad
        [(line, message)] = problem_lines(response.text)
        assert line == expected[0] and expected[1] in message, (bad, line, message)
        assert "Traceback" not in response.text
    assert web.manager.domains["v"].record.definition == before


def test_an_edit_needs_the_csrf_token_and_the_owner_and_waits_for_the_next_start(
    web: Web,
) -> None:
    me, bob = web.login(ME), web.login(BOB)
    define(web, ME, {"name": "v", "memory": 64, "boot": {"kernel": "/bin/sh"}})
    text = "name: v\nmemory: 128\nboot: {kernel: /bin/sh}\n"
    forged = web.client.post("/vms/v/edit", data={"csrf": "x", "definition": text},
                             headers=me.cookie)  # fmt: skip
    assert forged.status_code == 403
    assert web.get(bob, "/vms/v/edit").status_code == 403
    assert post_edit(web, bob, "v", text).status_code == 403
    assert web.manager.domains["v"].spec.memory == 64
    run(web, web.manager.start, Caller(ME, ME), "v")
    response = post_edit(web, me, "v", text, follow_redirects=False)
    assert response.status_code == 303  # saved, as `qumran edit` does, for the next start
    dom = web.manager.domains["v"]
    assert dom.spec.memory == 64 and dom.pending is not None and dom.pending.memory == 128


def test_line_of_finds_nested_fields_and_falls_back_to_the_parent() -> None:
    text = "name: v\nboot:\n  kernel: /k\ndisks:\n- path: /a\n- path: /b\n  format: vmdk\n"
    assert line_of(text, "boot.kernel") == 3
    assert line_of(text, "disks[1].format") == 7
    assert line_of(text, "boot.initrd") == 2  # missing: its mapping's line
    assert line_of(text, "nope") is None
    message = (
        "invalid definition: disks[1].format: Input should be 'raw' or 'qcow2'; "
        "x: unknown field (check the spelling; see docs/definitions.md)"
    )
    assert [(p.line, p.message) for p in problems(message, text)] == [
        (7, "disks[1].format: Input should be 'raw' or 'qcow2'"),
        (None, "x: unknown field (check the spelling; see docs/definitions.md)"),
    ]


# 15: images from the user's own cache
USER = "qumran-web-t1"


@pytest.fixture
def person() -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """A real user whose home (mode 0700) holds a built image, as `qumran image demo` leaves it."""
    if os.geteuid() != 0:
        pytest.skip("creates a user; needs root")
    base = short_tmpdir()
    home = base / "home"
    try:
        pwd.getpwnam(USER)
        subprocess.run(["usermod", "--home", str(home), USER], check=True)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(home), USER],
                       check=True)  # fmt: skip
    user = pwd.getpwnam(USER)
    demo = home / ".cache/qumran/images/demo"
    demo.mkdir(parents=True)
    (demo / "vmlinuz").write_bytes(b"kernel")
    (demo / "initrd.img").write_bytes(b"initrd")
    (demo / "demo.yaml").write_text("name: demo\nmemory: 256M\nboot:\n  kernel: vmlinuz\n"
                                    "  cmdline: console=ttyS0 quiet\n")  # fmt: skip
    # Root's own image folder, which this user may not read: linked into their cache.
    secret = base / "root-only"
    (secret / "sneaky").mkdir(parents=True)
    (secret / "sneaky" / "vmlinuz").write_bytes(b"root's")
    secret.chmod(0o700)
    (home / ".cache/qumran/images/sneaky").symlink_to(secret / "sneaky")
    (home / ".cache/qumran/images/not-an-image").mkdir()
    for path in [home, *home.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    yield user, home
    remove_tmpdir(base)


def test_images_are_read_with_the_users_rights(person: tuple[pwd.struct_passwd, Path]) -> None:
    user, home = person
    [image] = user_images(user.pw_uid, user.pw_gid)
    cache = home / ".cache/qumran/images"
    assert image.name == "demo"
    assert (image.kernel, image.initrd) == (
        str(cache / "demo/vmlinuz"),
        str(cache / "demo/initrd.img"),
    )
    assert image.cmdline == "console=ttyS0 quiet"
    # As root the link would be followed: the user's rights are what keep it out.
    assert {i.name for i in user_images(0, 0, cache)} == {"demo", "sneaky"}
    assert user_images(ALICE, ALICE) == []  # no account, no home: nothing, no error


def test_the_create_form_offers_the_users_images(
    web: Web, person: tuple[pwd.struct_passwd, Path]
) -> None:
    user, home = person
    someone = web.login(user.pw_uid)
    form = web.get(someone, "/vms/new").text
    options = re.findall(r'<option value="([^"]+)"[^>]*>', form)
    assert "demo" in options and "sneaky" not in options and "not-an-image" not in options
    assert re.search(r'name="boot" value="image" checked', form)
    assert 'value="console=ttyS0 quiet"' in form  # the image's own command line
    assert str(home / ".cache/qumran/images") in form
    fields = {"csrf": someone.csrf, "name": "from-image", "memory": "256M", "vcpus": "1",
              "boot": "image", "image": "demo", "cmdline": "", "serial": "on"}  # fmt: skip
    response = web.client.post("/vms", data=fields, headers=someone.cookie, follow_redirects=False)
    assert response.status_code == 303, response.text
    boot = web.manager.domains["from-image"].record.definition["boot"]
    cache = home / ".cache/qumran/images/demo"
    assert boot == {"kernel": str(cache / "vmlinuz"), "initrd": str(cache / "initrd.img"),
                    "cmdline": "console=ttyS0 quiet"}  # fmt: skip
    fields |= {"name": "nope", "image": "sneaky"}
    refused = web.client.post("/vms", data=fields, headers=someone.cookie)
    assert refused.status_code == 400 and "no image named 'sneaky'" in unescape(refused.text)
    assert "nope" not in web.manager.domains


def test_without_images_the_form_says_how_to_build_one(web: Web) -> None:
    alice = web.login(ALICE)  # no account: no cache
    form = web.get(alice, "/vms/new").text
    assert "qumran image demo" in form
    assert re.search(r'name="boot" value="kernel" checked', form)
    assert 'id="no-images"' in form

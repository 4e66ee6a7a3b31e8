"""The web manager, used as a person would: in a real headless Chromium, against a real
qumrand booting the demo guest under QEMU (TCG).

The tests run in file order and share one daemon and one demo VM, each leaving things as
the next expects. Screenshots of the main pages go to artifacts/web/, and the text of each
is checked for epoch dates and "--" placeholders (Web.shot).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Web, terminal_text
from qumran.images.demo import READY_LINE, build_demo

pytestmark = pytest.mark.browser

BOOT_MS = 90_000


def test_without_a_token_nobody_gets_in(web: Web) -> None:
    page = web.new_page()
    response = page.goto(f"{web.base}/")
    assert response.status == 401
    assert "not logged in" in page.inner_text("main")
    response = page.goto(f"{web.base}/login?token=not-a-token")
    assert response.status == 403
    assert "not valid" in page.inner_text("#message")
    web.shot(page, "login-refused")
    page.context.close()


def test_a_login_token_works_once(web: Web) -> None:
    url = web.login_url()
    page = web.new_page()
    page.goto(url)
    assert page.url == f"{web.base}/"
    assert "Virtual machines" in page.inner_text("h1")
    cookie = next(c for c in page.context.cookies() if c["name"] == "qumran_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts

    other = web.new_page()
    response = other.goto(url)  # the same link again, in another browser profile
    assert response.status == 403
    assert "already used" in other.inner_text("#message")
    assert other.goto(f"{web.base}/").status == 401
    other.context.close()
    page.context.close()


def test_the_create_form_shows_the_daemons_validation_messages(web: Web) -> None:
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/new")
    page.check("input[name=mode][value=custom]")  # "From an image" is first when there are images
    page.fill("input[name=name]", "bad name")
    page.fill("input[name=memory]", "1")
    page.fill("input[name=vcpus]", "two")
    page.click("details.advanced summary")  # a kernel by path is the advanced choice
    page.fill("input[name=kernel]", "relative/vmlinuz")
    assert page.is_checked("input[name=boot][value=kernel]")
    page.click("#create button[type=submit]")
    error = page.inner_text("#form-error")
    assert "'bad name' is not a valid name" in error
    assert "memory: 1 MiB is too little" in error
    assert "vcpus: Input should be a valid integer" in error
    assert "boot.kernel: path must be absolute" in error
    assert page.input_value("input[name=vcpus]") == "two"  # what was typed is kept
    web.shot(page, "create-invalid")
    assert web.daemon.call("GET", "/v1/vms?all=true").json() == []  # nothing defined
    page.context.close()


def test_create_the_demo_vm_from_its_image(web: Web) -> None:
    demo = build_demo()  # in this user's cache, where `qumran image demo` puts it
    page = web.logged_in_page()
    page.click("text=Create VM >> nth=0")
    page.wait_for_url(f"{web.base}/vms/new")  # loaded, with its script: not only begun
    page.check("input[name=mode][value=custom]")
    assert page.input_value("input[name=memory]") == "256M"  # the custom mode's default
    assert not page.is_visible("textarea[name=ssh_key]")  # the other mode's fields hide
    assert page.is_checked("input[name=boot][value=image]")  # the built images, offered
    options = page.eval_on_selector_all("select[name=image] option", "os => os.map(o => o.value)")
    assert "demo" in options  # beside any other image this user has built (debian-12, ...)
    page.select_option("select[name=image]", "demo")
    assert page.input_value("input[name=cmdline]") == demo.cmdline
    assert not page.is_visible("input[name=kernel]")  # typing a path is "advanced"
    page.fill("input[name=name]", "demo")
    page.fill("input[name=memory]", "256M")
    page.fill("input[name=vcpus]", "1")
    page.fill("textarea[name=nics]", "user")
    text = web.shot(page, "create")
    assert "demo (kernel + initrd, built" in text
    page.click("#create button[type=submit]")
    assert page.url == f"{web.base}/vms/demo"
    assert page.inner_text("#vm [data-field=state]") == "shutoff"
    info = web.daemon.vm("demo")
    assert info["definition"]["boot"] == {
        "kernel": str(demo.kernel), "initrd": str(demo.initrd), "cmdline": demo.cmdline,
    }  # fmt: skip
    nic = {"type": "user", "model": "virtio", "mac": None, "forward": []}
    assert info["definition"]["nics"] == [nic]
    page.context.close()


def test_a_shut_off_vm_shows_a_note_instead_of_graphs(web: Web) -> None:
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/demo")
    assert page.is_visible("#stats-off")
    assert "No data while shut off" in page.inner_text("#stats-off")
    assert not page.is_visible("#graphs")
    assert page.locator("canvas").count() == 0  # no empty charts drawn anywhere
    text = web.shot(page, "details-shutoff")
    assert "TIME:" not in text and "CPU %" not in text  # the old uPlot legends
    definition = page.inner_text("#definition")
    assert definition.startswith("name: demo\nmemory: 256\n")  # YAML, not JSON
    page.context.close()


def assert_time_axis_is_now(page: Any) -> None:
    """Each graph's time axis spans the last minutes (not 1970), at least one minute wide."""
    for scale in page.evaluate(
        "() => Object.values(window.qumranCharts).map(({plot}) =>"
        " [plot.scales.x.min, plot.scales.x.max, Date.now() / 1000])"
    ):
        assert scale[2] - 600 < scale[0] <= scale[1] - 60 and scale[1] <= scale[2] + 5, scale


def visible_actions(row: Any) -> tuple[list[str], list[str]]:
    """(outside the menu, inside it): the actions a person can see in a row."""
    first = row.locator(".primary-slot button:visible")
    inner = row.locator(".menu-items button:not([hidden])")
    return (
        [first.nth(i).get_attribute("data-action") for i in range(first.count())],
        [inner.nth(i).get_attribute("data-action") for i in range(inner.count())],
    )


def test_start_from_the_list_and_the_state_changes_live(web: Web) -> None:
    page = web.logged_in_page()
    row = page.locator('tr[data-vm="demo"]')
    assert row.locator("[data-field=state]").inner_text() == "shutoff"
    assert visible_actions(row) == (["start"], ["undefine"])
    assert row.locator("button:visible").count() == 1  # Start; the rest is behind ⋮
    page.evaluate("window.notReloaded = true")
    row.locator("button[data-action=start]").click()
    page.wait_for_function(
        "() => document.querySelector('tr[data-vm=demo]').dataset.state === 'running'"
    )
    assert page.evaluate("window.notReloaded") is True
    assert visible_actions(row) == (["shutdown"], ["reboot", "suspend", "reset", "destroy"])
    assert row.locator("button[data-action=start]").is_hidden()
    page.wait_for_function(
        "() => /^\\d+ s$/.test(document.querySelector('tr[data-vm=demo] [data-field=uptime]')"
        ".textContent)",
        timeout=15_000,
    )
    assert row.locator("[data-field=memory]").inner_text() == "256 MiB"
    assert row.locator("[data-field=vcpus]").inner_text() == "1"
    assert row.locator("[data-field=addresses]").inner_text() == "user-mode"
    web.shot(page, "list-running")
    row.locator("details.menu summary").click()
    assert row.locator("button[data-action=reboot]").is_visible()
    web.shot(page, "list-menu")
    page.keyboard.press("Escape")
    assert not row.locator("button[data-action=reboot]").is_visible()
    page.context.close()


def test_the_serial_console_shows_the_guest_and_typing_works(web: Web) -> None:
    first, second = web.logged_in_page(), web.logged_in_page()
    for page in (first, second):
        page.goto(f"{web.base}/vms/demo/console")
        page.wait_for_selector("#conn.ok")
    wait_for_terminal(first, READY_LINE, BOOT_MS)
    first.click("#terminal")
    first.keyboard.type("echo web-$((6*7))\n")
    for page in (first, second):  # both viewers see the command's output
        wait_for_terminal(page, "web-42", 20_000)
    web.shot(first, "console")
    first.context.close()
    second.context.close()


def test_the_details_page_graphs_update(web: Web) -> None:
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/demo")
    assert not page.is_visible("#stats-off")
    page.wait_for_function("() => Number(document.getElementById('vm').dataset.samples) >= 2")
    before = int(page.get_attribute("#vm", "data-samples") or 0)
    page.wait_for_function(
        "(n) => Number(document.getElementById('vm').dataset.samples) > n",
        arg=before,
        timeout=15_000,
    )
    assert page.locator("#g-cpu canvas").count() == 1
    assert page.locator("#g-mem canvas").count() == 1
    # The time axis spans this run (no 1970), in clock times; the headings carry units.
    assert_time_axis_is_now(page)
    assert "% of one host CPU" in page.inner_text("[data-now=cpu]")
    assert "MiB resident" in page.inner_text("[data-now=mem]")
    assert (
        page.inner_text("#disk-note") == "No disks: this VM boots from its kernel and initrd alone."
    )
    net = page.inner_text("#net-note")
    assert net.startswith("Traffic is not measured on user-mode network interfaces")
    events = page.inner_text("#events")
    assert "started" in events and "defined" in events
    web.shot(page, "details-running")
    page.goto(f"{web.base}/")  # the list's CPU sparkline fills in too
    page.wait_for_function(
        "() => JSON.parse(document.querySelector('tr[data-vm=demo] canvas.spark')"
        ".dataset.cpu).length >= 2",
        timeout=15_000,
    )
    page.context.close()


def test_shutdown_is_confirmed_and_shutoff_arrives_live(web: Web) -> None:
    page = web.logged_in_page()
    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    page.evaluate("window.notReloaded = true")
    page.locator('tr[data-vm="demo"] button[data-action=shutdown]').click()
    page.wait_for_function(
        "() => document.querySelector('tr[data-vm=demo]').dataset.state === 'shutoff'",
        timeout=60_000,
    )
    assert asked and "Shut down demo?" in asked[0]
    assert page.evaluate("window.notReloaded") is True
    row = page.locator('tr[data-vm="demo"]')
    assert visible_actions(row) == (["start"], ["undefine"])
    assert row.locator("[data-field=uptime]").inner_text() == ""
    web.shot(page, "list")
    assert web.daemon.vm("demo")["state"] == "shutoff"
    page.context.close()


def test_edit_the_definition_as_yaml_with_errors_on_their_lines(web: Web) -> None:
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/demo")
    page.click("#edit")
    assert page.url == f"{web.base}/vms/demo/edit"
    text = page.input_value("#definition")
    assert text.startswith("name: demo\nmemory: 256\n")
    page.fill(
        "#definition", text.replace("memory: 256", "memory: 1").replace("vcpus: 1", "cpus: 1")
    )
    page.click("#edit-form button[type=submit]")
    errors = page.inner_text("#form-error")
    assert "line 2 memory: 1 MiB is too little; at least 16 MiB" in errors
    assert "line 3 cpus: unknown field" in errors
    assert page.locator("#gutter .bad").all_inner_texts() == ["2", "3"]
    web.shot(page, "edit-invalid")
    assert web.daemon.vm("demo")["memory_mib"] == 256  # nothing changed
    page.fill("#definition", text.replace("memory: 256", "memory: 320M"))
    page.click("#edit-form button[type=submit]")
    assert page.url == f"{web.base}/vms/demo?saved=1"
    assert page.inner_text("#saved") == "Definition saved."
    assert "memory: 320\n" in page.inner_text("#definition")
    web.shot(page, "edit-saved")
    assert web.daemon.vm("demo")["memory_mib"] == 320
    page.context.close()


def test_a_request_without_the_csrf_token_changes_nothing(web: Web) -> None:
    page = web.logged_in_page()
    status = page.evaluate(
        "fetch('/vms/demo/start', {method: 'POST', headers: {Accept: 'application/json'}})"
        ".then(r => r.status)"
    )
    assert status == 403
    assert web.daemon.vm("demo")["state"] == "shutoff"
    page.context.close()


def wait_for_terminal(page: Any, text: str, timeout_ms: int) -> None:
    try:
        page.wait_for_function(
            """(text) => { const b = window.qumranTerminal.buffer.active;
                 for (let i = 0; i < b.length; i++)
                   if (b.getLine(i).translateToString(true).includes(text)) return true;
                 return false; }""",
            arg=text,
            timeout=timeout_ms,
        )
    except Exception as exc:
        shown = terminal_text(page)[-2000:]
        raise AssertionError(f"{text!r} not in the console:\n{shown}") from exc


def test_the_graphical_console_connects_through_the_proxy(web: Web) -> None:
    demo = build_demo()
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/new")
    page.check("input[name=mode][value=custom]")
    page.fill("input[name=name]", "screen")
    page.click("details.advanced summary")
    page.fill("input[name=kernel]", str(demo.kernel))
    page.fill("input[name=initrd]", str(demo.initrd))
    page.fill("input[name=cmdline]", "console=tty0 console=ttyS0 panic=-1")
    page.check("input[name=graphics]")
    page.click("#create button[type=submit]")
    assert page.url == f"{web.base}/vms/screen"
    page.locator("#vm form.actions button[data-action=start]").click()
    page.wait_for_selector("#vm[data-state=running]")
    # No network interface: nothing is said about network counters.
    assert page.inner_text("#net-note") == "No network interfaces."
    page.wait_for_selector("#g-cpu canvas", timeout=15_000)
    assert_time_axis_is_now(page)  # from the very first sample
    text = web.shot(page, "details-no-network")
    assert "user-mode" not in text and "counters" not in text and "measured" not in text
    page.click("text=Display")
    page.wait_for_selector("#conn.ok", timeout=20_000)
    assert page.inner_text("#conn") == "connected"
    page.wait_for_selector("#screen canvas")
    page.wait_for_timeout(3000)  # let the guest draw something
    web.shot(page, "display")
    page.goto(f"{web.base}/")
    row = page.locator('tr[data-vm="screen"]')
    row.locator("details.menu summary").click()
    row.locator("button[data-action=destroy]").click()
    page.wait_for_selector('tr[data-vm="screen"][data-state=shutoff]')
    page.context.close()


def test_the_storage_page_creates_lists_and_deletes_a_volume(web: Web) -> None:
    page = web.logged_in_page()
    page.click("header nav >> text=Storage")
    assert page.url == f"{web.base}/storage"
    assert page.inner_text("section.pool h2").startswith("Pool default")
    form = page.locator("#new-volume")
    form.locator("input[name=name]").fill("scratch")
    form.locator("input[name=size]").fill("32M")
    form.locator("select[name=format]").select_option("raw")
    form.locator("button[type=submit]").click()
    assert page.url == f"{web.base}/storage"
    row = page.locator('tr[data-volume="scratch"]')
    assert row.locator("[data-field=capacity]").inner_text() == "32 MiB"
    assert row.locator("td").nth(1).inner_text() == "raw"
    listed = web.daemon.call("GET", "/v1/pools/default/volumes").json()
    assert [(v["name"], v["capacity"]) for v in listed] == [("scratch", 32 << 20)]

    form.locator("input[name=name]").fill("scratch")  # the same name again: refused
    form.locator("input[name=size]").fill("1M")
    form.locator("button[type=submit]").click()
    assert "scratch" in page.inner_text("#form-error")
    assert page.locator('tr[data-volume="scratch"]').count() == 1
    row = page.locator('tr[data-volume="scratch"]')
    row.locator("details.menu summary").click()
    assert row.locator("button[data-action=delete]").is_visible()
    web.shot(page, "storage-menu")

    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    row.locator("button[data-action=delete]").click()
    page.wait_for_selector('tr[data-volume="scratch"]', state="detached")
    assert asked == ["Delete volume scratch? Its data is lost."]
    assert web.daemon.call("GET", "/v1/pools/default/volumes").json() == []
    page.context.close()


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBA8mOBRcChyI3GK2wtFIEt2QahBIOHADPL5wK5D3fjh t1@host"


@pytest.fixture
def tiny_image() -> Iterator[str]:
    """A 16 MiB raw disk as an image entry of this user's cache (what `qumran image import`
    leaves): it stands in for a real image, as only the overlay and the start matter here."""
    name = f"webtest-{os.getpid()}"
    entry = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache/qumran/images" / name
    entry.mkdir(parents=True)
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(entry / "disk.raw"), "16M"],
                       check=True)  # fmt: skip
        info = {"name": name, "disk": "disk.raw", "format": "raw", "virtual_size": 16 << 20,
                "digest": "0" * 64, "created": "2026-01-01T00:00:00+00:00",
                "source": "imported", "version": 1}  # fmt: skip
        (entry / "image.json").write_text(json.dumps(info))
        yield name
    finally:
        shutil.rmtree(entry, ignore_errors=True)


def test_create_a_vm_from_an_image_with_its_own_volume(web: Web, tiny_image: str) -> None:
    page = web.logged_in_page()
    page.goto(f"{web.base}/vms/new")
    assert page.is_checked("input[name=mode][value=image]")
    assert page.input_value("input[name=memory]") == "1G"
    assert not page.is_visible("input[name=kernel]")  # the custom mode's fields hide
    page.select_option("select[name=disk_image]", tiny_image)
    assert page.input_value("input[name=disk_size]") == "8G"  # 8G, or the image's if larger
    page.fill("input[name=name]", "web1")
    page.fill("input[name=memory]", "256M")
    page.fill("input[name=disk_size]", "64M")
    page.fill("textarea[name=ssh_key]", KEY)
    assert page.is_checked("input[name=start]")
    text = web.shot(page, "create-from-image")
    assert f"{tiny_image} (raw, 16 MiB" in text
    page.click("#create button[type=submit]")
    assert page.url == f"{web.base}/vms/web1"
    page.wait_for_selector("#vm[data-state=running]")
    info = web.daemon.vm("web1")
    [rule] = info["definition"]["nics"][0]["forward"]
    port = rule.split(":")[2].split("-")[0]
    assert rule == f"tcp:127.0.0.1:{port}-:22"
    ssh = page.inner_text("#ssh td")
    assert ssh == f"forwarded from 127.0.0.1:{port} · log in with qumran ssh web1"
    assert page.inner_text("#disks td") == "volume web1"
    assert info["definition"]["cloud_init"]["users"][0]["ssh_authorized_keys"] == [KEY]
    web.shot(page, "details-from-image")

    page.click("#disks a")  # the volume, on the Storage page
    assert page.url.startswith(f"{web.base}/storage")
    row = page.locator('tr[data-volume="web1"]')
    assert row.locator("[data-field=capacity]").inner_text() == "64 MiB"
    assert row.locator("[data-field=used-by]").inner_text() == "web1"
    assert f"image {tiny_image}" in row.inner_text()
    web.shot(page, "storage")
    page.on("dialog", lambda dialog: None)
    row.locator("details.menu summary").click()
    row.locator("button[data-action=delete]").click()  # in use: the daemon says by what
    assert "volume 'web1' is used by VM 'web1'" in page.inner_text("#form-error")

    web.daemon.call("POST", "/v1/vms/web1/destroy").raise_for_status()
    web.daemon.call("DELETE", "/v1/vms/web1").raise_for_status()
    web.daemon.call("DELETE", "/v1/pools/default/volumes/web1").raise_for_status()
    page.context.close()


def test_a_mode_switched_while_the_page_loads_takes_its_memory_default(
    web: Web, tiny_image: str
) -> None:
    page = web.logged_in_page()
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    page.route("**/static/create.js", hold)  # the form's script waits
    page.goto(f"{web.base}/vms/new", wait_until="commit")
    for _ in range(200):  # until the page asks for the script: the form is parsed
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    page.check("input[name=mode][value=custom]")  # a person quicker than the script
    assert page.input_value("input[name=memory]") == "1G"  # nothing swapped it yet
    held[0].continue_()
    page.wait_for_load_state("load")
    assert page.input_value("input[name=memory]") == "256M"  # the custom mode's default
    page.fill("input[name=memory]", "2G")  # typed: kept on any switch
    page.check("input[name=mode][value=image]")
    assert page.input_value("input[name=memory]") == "2G"
    page.context.close()


def test_the_networks_page_defines_starts_and_stops_a_network(web: Web) -> None:
    # The test daemon manages no host network (--no-networks): `user` networks only.
    page = web.logged_in_page()
    page.click("header nav >> text=Networks")
    assert page.url == f"{web.base}/networks"
    page.click("#define-network summary")
    page.fill("textarea[name=definition]", "name: lab\ntype: nat\nipv4: {address: 10.77.0.1/24}\n")
    page.click("#define-network button[type=submit]")
    assert "needs root's qumrand" in page.inner_text("#form-error")
    page.fill("textarea[name=definition]", "name: slirp\ntype: user\nshared: true\n")
    page.click("#define-network button[type=submit]")
    net = page.locator("section#net-slirp")
    assert net.locator("[data-field=state]").inner_text() == "inactive"
    net.locator("button[data-action=start]").click()
    assert page.locator("section#net-slirp [data-field=state]").inner_text() == "active"
    assert web.daemon.call("GET", "/v1/networks/slirp").json()["active"] is True
    web.shot(page, "networks")

    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    page.locator("section#net-slirp button[data-action=stop]").click()
    page.wait_for_selector("section#net-slirp [data-field=state]:text('inactive')")
    assert asked == ["Stop network slirp? Its bridge, DHCP and NAT rules go away."]
    page.locator("section#net-slirp button[data-action=undefine]").click()
    page.wait_for_selector("section#net-slirp", state="detached")
    assert web.daemon.call("GET", "/v1/networks").json() == []
    page.context.close()

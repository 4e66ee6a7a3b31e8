"""The web manager, used as a person would: in a real headless Chromium, against a real
qumrand booting the demo guest under QEMU (TCG).

The tests run in file order and share one daemon and one demo VM, each leaving things as
the next expects. Screenshots of the main pages go to artifacts/web/, and the text of each
is checked for epoch dates and "--" placeholders (Web.shot).
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Web, terminal_text
from qumran.images import READY_LINE, build_demo

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
    assert info["definition"]["nics"] == [{"type": "user", "model": "virtio", "mac": None}]
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

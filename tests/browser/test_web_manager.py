"""The web manager, used as a person would: in a real headless Chromium, against a real
qumrand booting the demo guest under QEMU (TCG).

The tests run in file order and share one daemon and one demo VM, each leaving things as
the next expects. Screenshots of the main pages go to artifacts/screenshots/.
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
    page.fill("input[name=kernel]", "relative/vmlinuz")
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


def test_create_the_demo_vm_from_the_form(web: Web) -> None:
    demo = build_demo()
    page = web.logged_in_page()
    page.click("text=Create VM >> nth=0")
    page.fill("input[name=name]", "demo")
    page.fill("input[name=memory]", "256M")
    page.fill("input[name=vcpus]", "1")
    page.fill("input[name=kernel]", str(demo.kernel))
    page.fill("input[name=initrd]", str(demo.initrd))
    page.fill("input[name=cmdline]", demo.cmdline)
    page.fill("textarea[name=nics]", "user")
    web.shot(page, "create")
    page.click("#create button[type=submit]")
    assert page.url == f"{web.base}/vms/demo"
    assert page.inner_text("#vm [data-field=state]") == "shutoff"
    info = web.daemon.vm("demo")
    assert info["definition"]["boot"]["initrd"] == str(demo.initrd)
    assert info["definition"]["nics"] == [{"type": "user", "model": "virtio", "mac": None}]
    page.context.close()


def test_start_from_the_list_and_the_state_changes_live(web: Web) -> None:
    page = web.logged_in_page()
    row = page.locator('tr[data-vm="demo"]')
    assert row.locator("[data-field=state]").inner_text() == "shutoff"
    page.evaluate("window.notReloaded = true")
    row.locator("button[data-action=start]").click()
    page.wait_for_function(
        "() => document.querySelector('tr[data-vm=demo]').dataset.state === 'running'"
    )
    assert page.evaluate("window.notReloaded") is True
    assert row.locator("button[data-action=start]").is_disabled()
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
    page.wait_for_function("() => Number(document.getElementById('vm').dataset.samples) >= 2")
    before = int(page.get_attribute("#vm", "data-samples") or 0)
    page.wait_for_function(
        "(n) => Number(document.getElementById('vm').dataset.samples) > n",
        arg=before,
        timeout=15_000,
    )
    assert page.locator("#g-cpu canvas").count() == 1
    events = page.inner_text("#events")
    assert "started" in events and "defined" in events
    web.shot(page, "details")
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
    web.shot(page, "list")
    assert web.daemon.vm("demo")["state"] == "shutoff"
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
    page.fill("input[name=kernel]", str(demo.kernel))
    page.fill("input[name=initrd]", str(demo.initrd))
    page.fill("input[name=cmdline]", "console=tty0 console=ttyS0 panic=-1")
    page.check("input[name=graphics]")
    page.click("#create button[type=submit]")
    assert page.url == f"{web.base}/vms/screen"
    page.locator("#vm ~ form.actions button[data-action=start]").click()
    page.wait_for_selector("#vm[data-state=running]")
    page.click("text=Display")
    page.wait_for_selector("#conn.ok", timeout=20_000)
    assert page.inner_text("#conn") == "connected"
    page.wait_for_selector("#screen canvas")
    page.wait_for_timeout(3000)  # let the guest draw something
    web.shot(page, "display")
    page.goto(f"{web.base}/")
    page.locator('tr[data-vm="screen"] button[data-action=destroy]').click()
    page.wait_for_selector('tr[data-vm="screen"][data-state=shutoff]')
    page.context.close()

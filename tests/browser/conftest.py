"""Browser tier: a real qumrand (QEMU under TCG) serving the web manager, driven by a real
headless Chromium (Debian's /usr/bin/chromium) through Playwright."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "web"
VENDOR = Path(__file__).resolve().parents[2] / "src" / "qumran" / "web" / "static" / "vendor"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: the web manager in a real headless Chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Web:
    """The web manager of one daemon, as a person with a browser uses it."""

    def __init__(self, daemon: Daemon, base: str, browser: Any) -> None:
        self.daemon = daemon
        self.base = base
        self.browser = browser

    def login_url(self) -> str:
        response = self.daemon.call("POST", "/v1/web/token")
        response.raise_for_status()
        url: str = response.json()["url"]
        return url

    def new_page(self) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # confirmations say yes
        return page

    def logged_in_page(self) -> Any:
        page = self.new_page()
        page.goto(self.login_url())
        assert page.url == f"{self.base}/", page.url
        return page

    @staticmethod
    def shot(page: Any, name: str) -> str:
        """Keep a screenshot in artifacts/web/ and return the page's visible text, checked
        for what a person should never see: epoch dates and "--" placeholders."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        text: str = page.inner_text("body")
        # An epoch year as a word of its own: a VM's random UUID may hold the digits 1969.
        for bad in (r"\b19(69|70)\b", "--", "undefined", "NaN"):
            assert not re.search(bad, text), f"{name}: {bad!r} shown on the page:\n{text}"
        return text


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    if not (VENDOR / "xterm" / "xterm.js").exists():
        pytest.skip("front-end assets missing: run web/build.sh")
    playwright_api = pytest.importorskip("playwright.sync_api")
    root = short_tmpdir()
    address = f"127.0.0.1:{free_port()}"
    daemon = Daemon(root, driver="real", web=address)
    daemon.start()
    try:
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS,  # Playwright gives it a new, empty profile
            )  # fmt: skip
            yield Web(daemon, f"http://{address}", browser)
            browser.close()
    finally:
        daemon.cleanup()
        remove_tmpdir(root)


def terminal_text(page: Any) -> str:
    """Everything in the xterm.js buffer (not only the rows on screen)."""
    text: str = page.evaluate(
        """() => { const b = window.qumranTerminal.buffer.active; const out = [];
                   for (let i = 0; i < b.length; i++)
                     out.push(b.getLine(i).translateToString(true));
                   return out.join("\\n"); }"""
    )
    return text


def as_json(page: Any) -> Any:
    return json.loads(page.inner_text("body"))

"""The Networks page, in-process against a Manager that manages no host network (as the
unit tests' daemons do): `user` networks go through every action, a `nat` one is refused
in the daemon's words, and another user sees only what is shared and changes nothing.
(Bridges, dnsmasq and NAT are tested in namespaces: tests/unit/test_networks_netns.py.)"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import test_web_app
from test_web_app import ALICE, ME, User, Web

from qumran.daemon.manager import Caller

web = test_web_app.web  # the fixture: one Manager with the fake driver, its web app


def post(web: Web, user: User, path: str, /, **fields: str) -> Any:
    return web.client.post(path, data={"csrf": user.csrf, **fields}, headers=user.cookie,
                           follow_redirects=False)  # fmt: skip


def refusal(html: str) -> str:
    found = re.search(r'<div class="error" id="form-error" role="alert"><strong>[^<]*</strong> '
                      r"(.*?)</div>", html, re.S)  # fmt: skip
    assert found, html[-2000:]
    return unescape(found.group(1))


def section(html: str, name: str) -> str:
    found = re.search(rf'<section class="network" id="net-{name}".*?</section>', html, re.S)
    assert found, html[-2000:]
    return found.group(0)


def networks(web: Web) -> dict[str, Any]:
    found = web.client.portal.call(web.manager.networks.list, Caller(0, 0))  # type: ignore[union-attr]
    return {n["name"]: n for n in found}


def test_root_defines_starts_stops_and_undefines(web: Web) -> None:
    me = web.login(ME)
    page = web.get(me, "/networks")
    assert page.status_code == 200
    assert '<a href="/networks">Networks</a>' in page.text
    assert "No networks yet." in page.text and "Define a network" in page.text

    done = post(web, me, "/networks", definition="name: home\ntype: user\nshared: true\n")
    assert done.status_code == 303 and done.headers["location"] == "/networks"
    assert networks(web)["home"]["active"] is False
    assert 'data-field="state">inactive' in section(web.get(me, "/networks").text, "home")

    assert post(web, me, "/networks/home/start").status_code == 303
    assert networks(web)["home"]["active"] is True
    shown = section(web.get(me, "/networks").text, "home")
    assert 'data-field="state">active' in shown and 'data-action="stop"' in shown

    assert post(web, me, "/networks/home/autostart").status_code == 303
    assert networks(web)["home"]["autostart"] is True
    refused = post(web, me, "/networks/home/undefine")
    assert refused.status_code == 409 and "active" in refusal(refused.text)
    assert post(web, me, "/networks/home/stop").status_code == 303
    assert post(web, me, "/networks/home/undefine").status_code == 303
    assert "home" not in networks(web)


def test_refusals_are_the_daemons_words_and_keep_the_text(web: Web) -> None:
    me = web.login(ME)
    text = "name: lab\ntype: nat\nipv4: {address: 192.168.150.1/24}\n"
    refused = post(web, me, "/networks", definition=text)
    assert refused.status_code == 400
    assert refusal(refused.text).startswith("type: a nat network needs root's qumrand")
    assert "name: lab" in unescape(refused.text)  # the text typed is still there to fix
    assert networks(web) == {}

    bad = post(web, me, "/networks", definition="name: [unclosed\n")
    assert bad.status_code == 400 and "invalid YAML" in refusal(bad.text)
    unknown = post(web, me, "/networks/none/start")
    assert unknown.status_code == 404 and "no network named 'none'" in refusal(unknown.text)
    odd = post(web, me, "/networks/none/explode")
    assert odd.status_code == 400 and "unknown action 'explode'" in refusal(odd.text)


def test_another_user_sees_shared_networks_only_and_changes_nothing(web: Web) -> None:
    me = web.login(ME)
    assert post(web, me, "/networks", definition="name: open\ntype: user\nshared: true\n"
                ).status_code == 303  # fmt: skip
    assert post(web, me, "/networks", definition="name: mine\ntype: user\n").status_code == 303
    alice = web.login(ALICE)
    page = web.get(alice, "/networks").text
    assert 'id="net-open"' in page and 'id="net-mine"' not in page
    assert "Define a network" not in page and 'data-action="start"' not in page
    refused = post(web, alice, "/networks/open/start")
    assert refused.status_code == 403 and "only root may start networks" in refusal(refused.text)
    defined = post(web, alice, "/networks", definition="name: hers\ntype: user\n")
    assert defined.status_code == 403
    assert set(networks(web)) == {"open", "mine"} and not networks(web)["open"]["active"]

"""The OpenAPI document is qumrand's contract: schemathesis against a real qumrand.

Every operation of ``/openapi.json`` is called with generated requests (examples,
coverage cases such as undocumented methods and boundary values, and fuzzed data) on
the daemon's UNIX socket, as root, and every answer is checked by all of schemathesis'
checks: no 5xx, the status, content type, headers and body documented, invalid data
refused, valid data accepted, the Allow header of a 405 and of OPTIONS as documented.
Then the known ways to get a 500 once, each by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.client.schema import HostInfo, VmInfo
from qumran.daemon.api import build_app
from qumran.daemon.manager import Caller, Manager

# Small, so the run stays well under a minute on a shared machine.
MAX_EXAMPLES = 40

# A definition can fit the schema and still be refused: its kernel must exist, and
# its disks, and no VM may have its name. So a well-formed body may get 400 or 409.
CONFIG = f"""
[generation]
max-examples = {MAX_EXAMPLES}

[[operations]]
include-name = "POST /v1/vms"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409"]

# Storage: a well-formed request may name a pool or volume that is not there (404), one in
# use or of that name already (409), or a directory, file or size the host refuses (400).
[[operations]]
include-path-regex = "^/v1/pools"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]

# Networks: a definition can fit the schema and be refused (a nat network needs ipv4; a
# subnet may clash; this qumrand offers `user` networks only), a name may be of no
# network (404), and a start or destroy may not apply to its state (409).
# Save and restore: a well-formed file name may be of no file, or of one that is not a
# snapshot or not of this VM (400); the VM may not run on a driver that saves (409).
[[operations]]
include-path-regex = "(/save|/managedsave|^/v1/restore)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]

[[operations]]
include-path-regex = "^/v1/networks"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    d = Daemon(root, driver="fake")
    d.start()
    # Something for the generated names to find now and then.
    for name in ("a", "0", "demo"):
        body = {"name": name, "memory": 64, "boot": {"kernel": "/bin/sh"}}
        assert d.call("POST", "/v1/vms", json=body).status_code == 201
    for name in ("default", "a"):
        body = {"name": name, "type": "user"}
        assert d.call("POST", "/v1/networks", json=body).status_code == 201
    yield d
    d.cleanup()
    remove_tmpdir(root)


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.client() as c:
        yield c


# The document the daemon serves, built here so that schemathesis can make one test per
# operation at collection time (test_the_daemon_serves_this_document checks it is the same).
DOCUMENT = build_app(cast(Manager, None)).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_str(CONFIG))


def test_the_daemon_serves_this_document(daemon: Daemon) -> None:
    assert daemon.call("GET", "/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_keeps_the_contract(case: Any, client: httpx.Client) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://qumrand")
    if "data" in kwargs:  # requests' name for a raw body; httpx calls it content
        kwargs["content"] = kwargs.pop("data")
    client.cookies.clear()
    client.cookies.update(kwargs.pop("cookies", None) or {})
    response = client.request(**kwargs)
    case.validate_response(response)


def test_the_document_describes_errors_and_the_definition(daemon: Daemon) -> None:
    document = daemon.call("GET", "/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"400", "403", "500"} <= set(responses), (method, path)
            assert "422" not in responses, (method, path)  # we answer 400
            for status, answer in responses.items():
                if status.startswith(("4", "5")):
                    schema_ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert schema_ref == "#/components/schemas/ErrorBody"
            if "{name}" in path:
                assert "404" in responses, (method, path)
    define = document["paths"]["/v1/vms"]["post"]
    body = define["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/VmSpec"}
    spec = document["components"]["schemas"]["VmSpec"]
    assert spec["additionalProperties"] is False
    assert set(spec["required"]) == {"name", "memory", "boot"}
    assert "409" in define["responses"]


def test_options_and_unknown_methods_answer_405_with_the_documented_methods(
    daemon: Daemon,
) -> None:
    document = daemon.call("GET", "/openapi.json").json()
    for path, operations in document["paths"].items():
        concrete = path.replace("{name}", "demo")
        for method in ("OPTIONS", "PATCH", "TRACE"):
            response = daemon.call(method, concrete)
            assert response.status_code == 405, (method, path)
            allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
            assert allowed == set(operations), (method, path)
            assert response.json()["error"]["code"] == "method-not-allowed"


# --- the 500s that were -----------------------------------------------------------------------


def define(daemon: Daemon, content: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return daemon.call("POST", "/v1/vms", content=content, headers=headers)


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] in ("invalid-argument", "not-found")
    for word in words:
        assert word in error["message"]
    assert "Traceback" not in error["message"] and "Errno" not in error["message"]


def test_a_path_over_the_file_name_limit_is_a_400(daemon: Daemon) -> None:
    long = {"name": "long", "memory": 64, "boot": {"kernel": "/" + "x" * 300}}
    response = daemon.call("POST", "/v1/vms", json=long)
    assert_refused(response, 400, "boot.kernel", "255 bytes")
    deep = {"name": "deep", "memory": 64, "boot": {"kernel": "/tmp" + "/x" * 3000}}
    assert_refused(daemon.call("POST", "/v1/vms", json=deep), 400, "boot.kernel")


def test_an_event_id_past_2_63_is_a_400(daemon: Daemon) -> None:
    response = daemon.call("GET", "/v1/events", params={"since": 2**63})
    assert_refused(response, 400, "since")
    assert_refused(daemon.call("GET", "/v1/events", params={"since": -1}), 400, "since")
    assert daemon.call("GET", "/v1/events", params={"since": 2**63 - 1}).json() == []


def test_a_number_of_4301_digits_is_a_400(daemon: Daemon) -> None:
    huge = b"1" * 4301  # past Python's limit on converting digits to an int
    body = b'{"name": "huge", "memory": ' + huge + b', "boot": {"kernel": "/bin/sh"}}'
    assert_refused(define(daemon, body), 400, "number too long")
    response = daemon.call(
        "PUT", "/v1/vms/demo/autostart", content=b'{"enabled": ' + huge + b"}",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_refused(response, 400)


def test_bad_json_is_a_400_naming_where(daemon: Daemon) -> None:
    assert_refused(define(daemon, b'{"name": '), 400, "not a JSON document", "line 1")
    assert_refused(define(daemon, b"[" * 100_000 + b"]" * 100_000), 400)


class Broken:
    """A manager whose every answer fails unexpectedly, with secrets in the exception."""

    def visible(self, caller: Caller) -> list[Any]:
        raise RuntimeError("cannot read /etc/shadow: secret-token-1234")


def test_an_internal_error_carries_no_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    app = build_app(Broken())  # type: ignore[arg-type]

    async def as_root(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = {"peer": Caller(uid=0, gid=0, pid=1)}  # what SO_PEERCRED would give
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=as_root, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="qumran.daemon.api"):
        response = asyncio.run(_get(transport, "/v1/vms"))
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error in qumrand (details in its log)"}
    }
    assert "secret-token-1234" in caplog.text  # the log has what the caller does not


async def _get(transport: httpx.ASGITransport, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url="http://qumrand") as c:
        return await c.get(path)


def test_the_vm_document_is_the_one_declared_for_the_client(daemon: Daemon) -> None:
    declared = set(VmInfo.__annotations__)
    assert set(DOCUMENT["components"]["schemas"]["VmInfo"]["required"]) == declared
    body = {"name": "declared", "memory": 64, "boot": {"kernel": "/bin/sh"}}
    assert set(daemon.call("POST", "/v1/vms", json=body).json()) == declared
    assert set(daemon.vm("declared")) == declared
    assert set(daemon.call("GET", "/v1/host").json()) == set(HostInfo.__annotations__)


def test_the_contract_daemon_makes_no_host_network(daemon: Daemon) -> None:
    """Generated requests start and stop networks: this qumrand runs in the host's network
    namespace, so it must refuse every type that would make a bridge or a rule there."""
    body = {"name": "n", "type": "isolated", "ipv4": {"address": "10.250.0.1/24"}}
    refused = daemon.call("POST", "/v1/networks", json=body)
    assert refused.status_code == 400
    assert "manages no host networks" in refused.json()["error"]["message"]

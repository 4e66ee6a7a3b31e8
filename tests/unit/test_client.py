"""The API client: HTTP/1.1 framing over a real UNIX socket, error mapping, socket paths.

The server here is a raw socket in a thread that answers each connection with scripted
bytes, sent in pieces, so framing is tested as the client really receives it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qumran.client import Client, DaemonNotRunning, ProtocolError, default_socket_path
from qumran.client.wire import quote, read_response, request
from qumran.errors import (
    AlreadyExists,
    ConnectionFailed,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    QumranError,
    Timeout,
)


class ScriptedServer:
    """Answers the n-th connection with the n-th reply: a list of byte pieces."""

    def __init__(self, path: str, replies: list[list[bytes]]) -> None:
        self.path = path
        self.replies = replies
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(_read_request(conn))
                for piece in reply:
                    conn.sendall(piece)
                    time.sleep(0.002)  # let the client see the pieces separately

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            size = int(line.split(b":")[1])
            while len(body) < size:
                body += conn.recv(4096)
    return data


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="qc", dir="/tmp")  # UNIX socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(sockdir: str) -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def start(*replies: list[bytes]) -> ScriptedServer:
        server = ScriptedServer(os.path.join(sockdir, f"s{len(servers)}.sock"), list(replies))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def json_reply(status: str, doc: object, *, pieces: int = 1) -> list[bytes]:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    whole = head + body
    step = max(1, len(whole) // pieces)
    return [whole[i : i + step] for i in range(0, len(whole), step)]


# --- framing ------------------------------------------------------------------------


def test_content_length_response_split_in_many_pieces(serve: Any) -> None:
    server = serve(json_reply("200 OK", {"hello": "world"}, pieces=20))
    resp = request(server.path, "GET", "/v1/host")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.body) == {"hello": "world"}


def test_request_is_http11_with_length_and_connection_close(serve: Any) -> None:
    server = serve(json_reply("201 Created", {}))
    request(server.path, "POST", "/v1/vms", b'{"name": "a"}')
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/vms HTTP/1.1"
    assert b"Connection: close" in lines
    assert b"Host: localhost" in lines
    assert b"Content-Length: 13" in lines
    assert body == b'{"name": "a"}'


def test_chunked_body_with_extensions_and_trailers(serve: Any) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;note=x\r\n[1, 2\r\n"
        b"A\r\n, 3, 4, 5]\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    server = serve([raw[i : i + 7] for i in range(0, len(raw), 7)])
    assert json.loads(request(server.path, "GET", "/").body) == [1, 2, 3, 4, 5]


def test_chunked_wins_over_content_length() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    assert read_response(io.BytesIO(raw)).body == b"ok"


def test_body_without_length_runs_until_close(serve: Any) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\n\r\n", b"[tr", b"ue]"])
    assert request(server.path, "GET", "/").body == b"[true]"


def test_no_content_and_interim_responses() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    resp = read_response(io.BytesIO(raw))
    assert (resp.status, resp.body, resp.headers["x-a"]) == (204, b"", "1, 2")


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # closed before answering
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
    ],
)
def test_malformed_responses_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_response(io.BytesIO(raw))


def test_quote_escapes_everything_but_unreserved() -> None:
    assert quote("web-1_a.b~") == "web-1_a.b~"
    assert quote("a b/ü?") == "a%20b%2F%C3%BC%3F"


# --- connecting -----------------------------------------------------------------------


def test_missing_socket_says_how_to_start_the_daemon(sockdir: str) -> None:
    path = os.path.join(sockdir, "none.sock")
    with pytest.raises(DaemonNotRunning) as info:
        Client(path).list_vms()
    assert path in info.value.message
    assert "sudo qumrand" in info.value.message
    assert info.value.code == "connection-failed"


def test_stale_socket_is_connection_refused(sockdir: str) -> None:
    path = os.path.join(sockdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    with pytest.raises(DaemonNotRunning, match="nothing listens"):
        Client(path).host()


def test_silent_daemon_times_out(sockdir: str) -> None:
    path = os.path.join(sockdir, "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(Timeout):
            Client(path, timeout=0.3).host()
        assert time.monotonic() - started < 3
    finally:
        mute.close()


def test_daemon_hanging_up_mid_answer(serve: Any) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n[1, 2"])
    with pytest.raises(ProtocolError, match="after 5 of 50 bytes"):
        Client(server.path).list_vms()


# --- the API methods --------------------------------------------------------------------

VM = {"name": "web 1", "state": "running", "pid": 42}


@pytest.mark.parametrize(
    ("call", "request_line", "body"),
    [
        (lambda c: c.host(), b"GET /v1/host", None),
        (lambda c: c.list_vms(), b"GET /v1/vms", None),
        (lambda c: c.list_vms(all=True), b"GET /v1/vms?all=true", None),
        (lambda c: c.get_vm("web 1"), b"GET /v1/vms/web%201", None),
        (lambda c: c.define({"name": "x"}), b"POST /v1/vms", {"name": "x"}),
        (lambda c: c.start("web 1"), b"POST /v1/vms/web%201/start", None),
        (lambda c: c.shutdown("w"), b"POST /v1/vms/w/shutdown", None),
        (lambda c: c.destroy("w"), b"POST /v1/vms/w/destroy", None),
        (lambda c: c.reboot("w"), b"POST /v1/vms/w/reboot", None),
        (lambda c: c.reset("w"), b"POST /v1/vms/w/reset", None),
        (lambda c: c.suspend("w"), b"POST /v1/vms/w/suspend", None),
        (lambda c: c.resume("w"), b"POST /v1/vms/w/resume", None),
        (lambda c: c.set_autostart("w", False), b"PUT /v1/vms/w/autostart", {"enabled": False}),
        (lambda c: c.events(), b"GET /v1/events", None),
        (lambda c: c.events(since=7), b"GET /v1/events?since=7", None),
    ],
)
def test_each_method_sends_its_request(
    serve: Any, call: Any, request_line: bytes, body: Any
) -> None:
    server = serve(json_reply("200 OK", VM))
    assert call(Client(server.path)) == VM
    head, _, sent = server.requests[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == request_line + b" HTTP/1.1"
    assert (json.loads(sent) if sent else None) == body


def test_undefine_returns_none_on_204(serve: Any) -> None:
    server = serve([b"HTTP/1.1 204 No Content\r\n\r\n"])
    Client(server.path).undefine("w")
    assert server.requests[0].startswith(b"DELETE /v1/vms/w HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("not-found", "404 Not Found", NotFound),
        ("already-exists", "409 Conflict", AlreadyExists),
        ("invalid-state", "409 Conflict", InvalidState),
        ("permission-denied", "403 Forbidden", PermissionDenied),
        ("invalid-argument", "400 Bad Request", InvalidArgument),
        ("timeout", "504 Gateway Timeout", Timeout),
        ("something-new", "500 Internal Server Error", QumranError),
    ],
)
def test_error_bodies_become_our_errors(
    serve: Any, code: str, status: str, cls: type[QumranError]
) -> None:
    server = serve(json_reply(status, {"error": {"code": code, "message": "it went wrong"}}))
    with pytest.raises(cls) as info:
        Client(server.path).start("w")
    assert type(info.value) is cls
    assert info.value.message == "it went wrong"


def test_framework_validation_detail_is_invalid_argument(serve: Any) -> None:
    detail = [{"loc": ["body", "enabled"], "msg": "Field required", "type": "missing"}]
    server = serve(json_reply("422 Unprocessable Entity", {"detail": detail}))
    with pytest.raises(InvalidArgument, match=r"^enabled: Field required$"):
        Client(server.path).set_autostart("w", True)


def test_non_json_error_body_is_kept_as_message(serve: Any) -> None:
    server = serve([b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\nupstream!"])
    with pytest.raises(QumranError, match=r"^upstream!$"):
        Client(server.path).host()


def test_invalid_json_success_body_is_protocol_error(serve: Any) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{nope"])
    with pytest.raises(ProtocolError) as info:
        Client(server.path).host()
    assert isinstance(info.value, ConnectionFailed)


def test_empty_name_is_refused_before_any_request() -> None:
    with pytest.raises(InvalidArgument):
        Client("/nonexistent.sock").get_vm("")


# --- socket paths -----------------------------------------------------------------------


# The rules themselves, for every kind of session: tests/unit/test_runtime_paths.py.


def test_socket_path_defaults_to_the_effective_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUMRAN_SOCKET", raising=False)
    assert default_socket_path() == default_socket_path(os.geteuid())
    assert Client().socket_path == default_socket_path()
    assert Client("/a/b.sock").socket_path == "/a/b.sock"
    assert Path(default_socket_path()).name == "qumrand.sock"


# --- hostile input ---------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_any_bytes_give_a_response_or_a_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        read_response(io.BytesIO(raw))


@given(
    st.binary(max_size=200).map(lambda b: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + b)
)
def test_any_chunked_body_gives_a_response_or_a_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        read_response(io.BytesIO(raw))


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
def test_chunked_bodies_reassemble_exactly(chunks: list[bytes]) -> None:
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    assert read_response(io.BytesIO(raw)).body == b"".join(chunks)

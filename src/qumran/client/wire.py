"""A minimal HTTP/1.1 client over a UNIX socket, just enough for qumrand's API.

Why not ``http.client``: importing it pulls in the email package (about 20 ms), and
``qumran list`` must start fast. One request per connection (``Connection: close``);
message framing per RFC 9112 section 6: chunked transfer coding (section 7.1), else
Content-Length, else the body runs until the peer closes.
"""

from __future__ import annotations

# _socket, the C module, not socket.py: socket.py adds ~2.5 ms of imports (selectors,
# array, ...) to every `qumran` run, for conveniences a one-request client does not need.
import _socket
import io

from qumran.client.errors import DaemonNotRunning, ProtocolError
from qumran.errors import ConnectionFailed, Timeout

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from typing import Any, BinaryIO

MAX_LINE = 65536  # longest status/header/chunk-size line we accept
MAX_HEADERS = 100
_HEXDIGITS = b"0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class Response:
    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names lower-cased; repeated fields joined with ", "
        self.body = body

    def __repr__(self) -> str:
        return f"Response({self.status} {self.reason!r}, {len(self.body)} bytes)"


def quote(segment: str) -> str:
    """Percent-encode one path segment (RFC 3986 section 2.1)."""
    return "".join(
        c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode()) for c in segment
    )


def not_running_message(socket_path: str, exc: OSError) -> str:
    why = "no such socket" if isinstance(exc, FileNotFoundError) else "nothing listens there"
    return (
        f"cannot connect to qumrand at {socket_path} ({why}): is the daemon running? "
        "Start it with `qumrand` (your own VMs) or `sudo qumrand` (the system instance), "
        "or point QUMRAN_SOCKET or --socket at its socket"
    )


class _SocketReader(io.RawIOBase):
    """The raw side of a buffered reader over a connected socket (what makefile gives)."""

    def __init__(self, sock: _socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


def connect(socket_path: str, timeout: float | None) -> _socket.socket:
    """Open a stream connection to the daemon, translating OSError into our errors."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonNotRunning(not_running_message(socket_path, exc)) from None
    except PermissionError:
        sock.close()
        raise ConnectionFailed(
            f"cannot connect to qumrand at {socket_path}: permission denied "
            "(the system instance's socket is for root; use sudo, or run your own `qumrand`)"
        ) from None
    except TimeoutError:
        sock.close()
        raise Timeout(f"qumrand at {socket_path} did not accept the connection in time") from None
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot connect to qumrand at {socket_path}: {exc}") from None
    return sock


def encode_request(method: str, target: str, body: bytes | None) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    head.append("Accept: application/json")
    if body is not None:
        head.append("Content-Type: application/json")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b"")


def request(
    socket_path: str,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    timeout: float | None = 60.0,
) -> Response:
    """Send one request and read its whole response."""
    sock = connect(socket_path, timeout)
    try:
        try:  # noqa: SIM105 (contextlib.suppress: an import the CLI does without)
            sock.sendall(encode_request(method, target, body))
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading our request (too many connections?)
        with io.BufferedReader(_SocketReader(sock)) as stream:
            return read_response(stream, head_request=method == "HEAD")
    except TimeoutError:
        raise Timeout(f"qumrand did not answer {method} {target} in time") from None
    except ConnectionError as exc:
        raise ConnectionFailed(f"lost the connection to qumrand at {socket_path}: {exc}") from None
    finally:
        sock.close()


def read_response(stream: BinaryIO, *, head_request: bool = False) -> Response:
    """Parse a response; interim 1xx responses (RFC 9110 section 15.2) are skipped."""
    while True:
        status, reason = _status_line(_line(stream, "status line"))
        headers = _headers(stream)
        if not (100 <= status < 200 and status != 101):
            break
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, reason, headers, b"")
    coding = headers.get("transfer-encoding", "").lower()
    if coding:
        # RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length.
        if coding.rsplit(",", 1)[-1].strip() == "chunked":
            return Response(status, reason, headers, _chunked(stream))
        return Response(status, reason, headers, stream.read())
    length = headers.get("content-length")
    if length is None:
        return Response(status, reason, headers, stream.read())
    if not length.isdigit():
        raise ProtocolError(f"qumrand sent an invalid Content-Length: {length!r}")
    return Response(status, reason, headers, _exactly(stream, int(length)))


def _line(stream: BinaryIO, what: str) -> bytes:
    line = stream.readline(MAX_LINE + 1)
    if not line:
        raise ProtocolError(f"qumrand closed the connection before sending the {what}")
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ProtocolError(f"qumrand sent a truncated or overlong {what}")
    return line.rstrip(b"\r\n")


def _status_line(line: bytes) -> tuple[int, str]:
    parts = line.split(b" ", 2)
    code = parts[1] if len(parts) > 1 else b""
    if not parts[0].startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x response: {line[:80]!r}")
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return int(code), reason


def _headers(stream: BinaryIO) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(stream, "headers")
        if not line:
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise ProtocolError(f"qumrand sent more than {MAX_HEADERS} header lines")


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ProtocolError(f"qumrand closed the connection after {len(data)} of {size} bytes")
    return data


def _chunked(stream: BinaryIO) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_text = _line(stream, "chunk size").split(b";", 1)[0].strip()
        if not size_text or size_text.strip(_HEXDIGITS) or len(size_text) > 16:
            raise ProtocolError(f"invalid chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            _headers(stream)  # the trailer section; nothing in it matters to us
            return b"".join(chunks)
        chunks.append(_exactly(stream, size))
        if _line(stream, "chunk end"):
            raise ProtocolError("chunk data longer than its announced size")

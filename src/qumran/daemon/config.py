"""qumrand's settings: built-in defaults, then the settings file, then the command line.

The file is TOML (docs/configuration.md): ``/etc/qumran/qumrand.toml`` for root's daemon,
``$XDG_CONFIG_HOME/qumran/qumrand.toml`` for a user's. Its keys are the command-line
options' names::

    log-level = "info"
    state-dir = "/var/lib/qumran"
    run-dir = "/run/qumran"

    [web]
    enabled = true
    address = "127.0.0.1:8090"

    [limits]
    max-conns-per-uid = 64

    [networks]
    enabled = true      # bridges, dnsmasq and nftables rules of virtual networks (root)
    default = true      # define the `default` NAT network on first start

    [libvirt]
    enabled = true      # libvirt's remote protocol, for virsh & co (docs/libvirt.md)
    socket = "/run/qumran/libvirt-sock"   # default: libvirt-sock beside the API socket

A missing file is the defaults. A bad one stops qumrand with one line naming the file,
the line and the key (:class:`ConfigError`); nothing in it is half-applied.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qumran.config import paths
from qumran.daemon import limits
from qumran.daemon.limits import Limits
from qumran.errors import QumranError

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_WEB = "127.0.0.1:8090"
_WEB_ON = "on"  # `--web` given alone: on, at the address the file (or the default) names
_NO_FILE = ""  # --no-config (a --config value is a Path, never this)


class ConfigError(QumranError):
    code = "invalid-argument"


@dataclass(frozen=True)
class Settings:
    socket: str
    state_dir: Path
    run_dir: Path
    driver: str = "real"
    log_level: str = "info"
    web_enabled: bool = False
    web_address: str = DEFAULT_WEB
    limits: Limits = field(default_factory=lambda: Limits())
    config_file: Path | None = None  # the file the settings came from, if one was read
    # Virtual networks (docs/networks.md): manage bridges, dnsmasq and nftables (root's
    # qumrand only); and define the `default` NAT network on the first start (None:
    # automatic, for the system daemon only: root with the system state directory).
    networks_enabled: bool = True
    default_network: bool | None = None
    # libvirt's remote protocol for virsh, virt-manager and the bindings (docs/libvirt.md):
    # on by default, on its own socket (None: libvirt-sock beside the API socket).
    libvirt_enabled: bool = True
    libvirt_socket_path: str | None = None

    @property
    def libvirt_socket(self) -> str | None:
        """The libvirt protocol's socket, None when it is off."""
        if not self.libvirt_enabled:
            return None
        return self.libvirt_socket_path or os.path.join(
            os.path.dirname(self.socket), "libvirt-sock"
        )

    @property
    def make_default_network(self) -> bool:
        if self.default_network is not None:
            return self.default_network and self.networks_enabled
        return self.networks_enabled and os.geteuid() == 0 and self.state_dir == paths.state_dir(0)

    @property
    def web(self) -> str | None:
        """HOST:PORT of the web manager, None when it is off."""
        return self.web_address if self.web_enabled else None

    @classmethod
    def defaults(cls) -> Settings:
        return cls(paths.default_socket_path(), paths.state_dir(), paths.runtime_dir())


# --- the command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """qumrand's options. Their help shows the defaults for the user asking; an option
    not given is absent from the parsed namespace, so the file can fill it."""
    here = Settings.defaults()
    config = paths.config_file()
    parser = argparse.ArgumentParser(
        prog="qumrand",
        description="The Qumran management daemon.",
        epilog=(
            f"Settings come from the built-in defaults, then the settings file ({config}, "
            f"{'present' if config.exists() else 'not present'} here; see "
            "docs/configuration.md), then these options. SIGHUP (or `qumran daemon restart`) "
            "restarts qumrand in place, keeping its socket; VMs keep running."
        ),
    )
    add = parser.add_argument
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"settings file (default: {config}; a missing default file means no settings)",
    )
    add(
        "--no-config",
        dest="config",
        action="store_const",
        const=_NO_FILE,
        help="read no settings file (the last of --config and --no-config counts)",
    )
    add(
        "--socket",
        metavar="PATH",
        help=f"API socket (default: {here.socket}; clients look there too)",
    )
    add(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"where the database lives (default: {here.state_dir})",
    )
    add(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help=f"runtime files of VMs (default: {here.run_dir})",
    )
    add(
        "--driver",
        choices=("real", "fake"),
        help="'fake' runs stand-in VM processes instead of hypervisors, for tests (default: real)",
    )
    add("--log-level", choices=LOG_LEVELS, help="how much qumrand logs (default: info)")
    add(
        "--web",
        nargs="?",
        const=_WEB_ON,
        metavar="HOST:PORT",
        help="also serve the web manager, on this TCP address (alone: the settings "
        f"file's address, else {DEFAULT_WEB}; default: off, unless the file turns it on)",
    )
    add("--no-web", action="store_true",
        help="do not serve the web manager, whatever the settings file says")  # fmt: skip
    add("--no-networks", action="store_true",
        help="manage no bridges, dnsmasq or firewall rules: offer `user` networks only "
        "(default: root's qumrand manages them)")  # fmt: skip
    add("--default-network", dest="default_network", action="store_const", const=True,
        help="define the `default` NAT network on first start (default: only the system "
        "daemon, root's with its own state directory, does)")  # fmt: skip
    add("--no-default-network", dest="default_network", action="store_const", const=False,
        help="do not define the `default` network")  # fmt: skip
    add("--libvirt-socket", metavar="PATH",
        help="serve libvirt's remote protocol (virsh -c 'qemu+unix:///system?socket=PATH') "
        "on this socket (default: libvirt-sock beside --socket)")  # fmt: skip
    add("--no-libvirt", action="store_true",
        help="do not serve libvirt's remote protocol, whatever the settings file says")  # fmt: skip
    limits.add_options(parser)
    for action in parser._actions:
        # The defaults are in the help texts; absent options are left for the file.
        if action.help and "%(default)s" in action.help:
            action.help = action.help.replace("%(default)s", str(action.default))
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return parser


def resolve(args: argparse.Namespace) -> Settings:
    """The settings: ``args`` (options given) over the file over the defaults."""
    given = vars(args)
    settings = Settings.defaults()
    explicit = given.get("config")
    if explicit != _NO_FILE:
        settings = apply_file(settings, explicit or paths.config_file(), explicit is not None)
    enabled, address = settings.web_enabled, settings.web_address
    if given.get("no_web"):
        enabled = False
    elif "web" in given:
        enabled = True
        address = address if given["web"] == _WEB_ON else given["web"]
        try:
            parse_address(address)
        except ValueError as exc:
            raise ConfigError(f"--web: {exc}") from None
    bounds = replace(
        settings.limits,
        **{name: given[name] for name in Limits.__dataclass_fields__ if name in given},
    )
    return replace(
        settings,
        socket=given.get("socket") or settings.socket,
        state_dir=given.get("state_dir") or settings.state_dir,
        run_dir=given.get("run_dir") or settings.run_dir,
        driver=given.get("driver") or settings.driver,
        log_level=given.get("log_level") or settings.log_level,
        web_enabled=enabled,
        web_address=address,
        limits=bounds,
        networks_enabled=False if given.get("no_networks") else settings.networks_enabled,
        default_network=given.get("default_network", settings.default_network),
        libvirt_enabled=False if given.get("no_libvirt") else (
            True if "libvirt_socket" in given else settings.libvirt_enabled),
        libvirt_socket_path=given.get("libvirt_socket") or settings.libvirt_socket_path,
    )  # fmt: skip


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); ValueError says what is wrong."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT, such as {DEFAULT_WEB}")
    return host, int(port)


# --- the file ---------------------------------------------------------------------------


def apply_file(settings: Settings, path: Path, explicit: bool) -> Settings:
    """``settings`` with the file's over them; the defaults' file may be missing."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such settings file") from None
        return settings
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the settings file {path}: {why}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}, {_toml_error(str(exc))}") from None
    found = _FileReader(path, text)
    values = found.read(doc)
    bounds = replace(settings.limits, **values.get("limits", {}))
    return replace(
        settings,
        state_dir=values.get("state-dir", settings.state_dir),
        run_dir=values.get("run-dir", settings.run_dir),
        log_level=values.get("log-level", settings.log_level),
        web_enabled=values.get("web.enabled", settings.web_enabled),
        web_address=values.get("web.address", settings.web_address),
        limits=bounds,
        networks_enabled=values.get("networks.enabled", settings.networks_enabled),
        default_network=values.get("networks.default", settings.default_network),
        libvirt_enabled=values.get("libvirt.enabled", settings.libvirt_enabled),
        libvirt_socket_path=values.get("libvirt.socket", settings.libvirt_socket_path),
        config_file=path,
    )


def _toml_error(message: str) -> str:
    """tomllib's "Invalid value (at line 3, column 9)" as "line 3, column 9: ..."."""
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match is None:
        return f"not valid TOML: {message}"
    what = message[: match.start()]
    return f"line {match[1]}, column {match[2]}: not valid TOML: {what[:1].lower()}{what[1:]}"


def _absolute_path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a path, in quotes")
    if not os.path.isabs(value):
        raise ValueError(f"{value!r} must be an absolute path")
    return Path(value)


def _log_level(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} must be true or false")
    return value


def _address(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'{value!r} must be HOST:PORT in quotes, such as "{DEFAULT_WEB}"')
    parse_address(value)
    return value


def _limit(kind: type) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} must be a number")
        if kind is int and not isinstance(value, int):
            raise ValueError(f"{value!r} must be a whole number")
        if not value > 0:
            raise ValueError(f"{value!r} must be more than 0")
        return kind(value)

    return check


_TOP: dict[str, Callable[[object], Any]] = {
    "log-level": _log_level,
    "state-dir": _absolute_path,
    "run-dir": _absolute_path,
}
_WEB: dict[str, Callable[[object], Any]] = {"enabled": _boolean, "address": _address}
_NETWORKS: dict[str, Callable[[object], Any]] = {"enabled": _boolean, "default": _boolean}
_LIBVIRT: dict[str, Callable[[object], Any]] = {
    "enabled": _boolean,
    "socket": lambda v: str(_absolute_path(v)),
}


def _limit_keys() -> dict[str, tuple[str, Callable[[object], Any]]]:
    """[limits] keys: the limits' option names without their dashes -> (field, check)."""
    parser = argparse.ArgumentParser(add_help=False)
    limits.add_options(parser)
    fields = Limits.__dataclass_fields__
    return {
        action.option_strings[0].removeprefix("--"): (
            action.dest,
            _limit(type(getattr(Limits(), action.dest))),
        )
        for action in parser._actions
        if action.dest in fields
    }


class _FileReader:
    """Checks a parsed file against the keys we know, naming lines in its errors."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = _key_lines(text)

    def fail(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key) or self.lines.get(key.rpartition(".")[0])
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigError(f"{where}: {key}: {message}")

    def read(self, doc: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        tables = {"web": _WEB, "networks": _NETWORKS, "libvirt": _LIBVIRT, "limits": None}
        for key, value in doc.items():
            if key in _TOP:
                values[key] = self._check(key, _TOP[key], value)
            elif key in tables:
                if not isinstance(value, dict):
                    raise self.fail(key, f"must be a table ([{key}] with its keys below it)")
                values.update(self._table(key, value))
            else:
                known = ", ".join([*_TOP, *(f"[{t}]" for t in tables)])
                raise self.fail(key, f"unknown setting (known: {known})")
        return values

    def _table(self, table: str, doc: dict[str, Any]) -> dict[str, Any]:
        if table in ("web", "networks", "libvirt"):
            keys = {"web": _WEB, "networks": _NETWORKS, "libvirt": _LIBVIRT}[table]
            checks = {f"{table}.{k}": (f"{table}.{k}", check) for k, check in keys.items()}
        else:
            checks = {f"limits.{k}": (field, check) for k, (field, check) in _limit_keys().items()}
        out: dict[str, Any] = {}
        bounds: dict[str, Any] = {}
        for name, value in doc.items():
            key = f"{table}.{name}"
            if key not in checks:
                known = ", ".join(k.partition(".")[2] for k in checks)
                raise self.fail(key, f"unknown setting (known in [{table}]: {known})")
            field, check = checks[key]
            if table == "limits":
                bounds[field] = self._check(key, check, value)
            else:
                out[field] = self._check(key, check, value)
        if table == "limits":
            out["limits"] = bounds
        return out

    def _check(self, key: str, check: Callable[[object], Any], value: object) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


_TABLE = re.compile(r"\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY = re.compile(r"\"?([A-Za-z0-9_.-]+)\"?\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """Where each key is set: "web.address" -> its line number (1-based).

    tomllib keeps no positions; this light scan of the lines finds them for the keys
    qumrand knows (plain and dotted keys, one table level), which is all errors need.
    """
    found: dict[str, int] = {}
    table = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if (match := _TABLE.match(line)) is not None:
            table = match[1]
            found.setdefault(table, number)
        elif (match := _KEY.match(line)) is not None:
            key = f"{table}.{match[1]}" if table else match[1]
            found.setdefault(key, number)
            if "." in match[1]:  # a dotted key (web.enabled = true) also names its table
                found.setdefault(key.rpartition(".")[0], number)
    return found

"""Where a user's qumrand listens, and where the client looks: the same place, always.

``qumran.config.paths`` (the daemon's) and ``qumran.client.paths`` (the CLI's, written
with ``os`` alone for start-up time) are two codings of one rule; each session kind a
user can be in is tried on both, with real folders: a systemd login ($XDG_RUNTIME_DIR),
logind's folder without the variable (ssh), none at all (``su -``, containers), and a
runtime folder that is someone else's (``su`` without ``-`` keeps the caller's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qumran.client import paths as client_paths
from qumran.config import paths as config_paths
from qumran.errors import ConnectionFailed

UID = 4242  # a user these tests pretend to be; the folders below are made theirs


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private /run/user and /tmp for both modules; no QUMRAN_SOCKET, no XDG variable."""
    for name in ("QUMRAN_SOCKET", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "run-user").mkdir()
    (tmp_path / "tmp").mkdir()
    for module in (client_paths, config_paths):
        monkeypatch.setattr(module, "USER_RUNTIME_BASE", str(tmp_path / "run-user"))
        monkeypatch.setattr(module, "FALLBACK_BASE", str(tmp_path / "tmp"))
    yield tmp_path


def owned_dir(path: Path, uid: int = UID) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, uid, uid)
    return path


def both(uid: int) -> str:
    """The socket both modules name; they must agree."""
    ours = client_paths.default_socket_path(uid)
    assert config_paths.default_socket_path(uid) == ours
    if "QUMRAN_SOCKET" not in os.environ:  # else the socket is elsewhere, on purpose
        assert str(config_paths.runtime_dir(uid) / "qumrand.sock") == ours
    return ours


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns folders to another uid")


def test_a_systemd_login_uses_xdg_runtime_dir(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = owned_dir(world / "xdg")
    owned_dir(world / "run-user" / str(UID))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert both(UID) == f"{xdg}/qumran/qumrand.sock"
    assert not config_paths.is_fallback(config_paths.runtime_dir(UID), UID)


def test_logind_folder_without_the_variable(world: Path) -> None:
    base = owned_dir(world / "run-user" / str(UID))
    assert both(UID) == f"{base}/qumran/qumrand.sock"


def test_no_runtime_folder_falls_back_to_a_private_tmp_folder(world: Path) -> None:
    assert both(UID) == f"{world}/tmp/qumran-{UID}/qumrand.sock"
    assert config_paths.is_fallback(config_paths.runtime_dir(UID), UID)


def test_someone_elses_runtime_folder_is_passed_over(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `su alice` from bob keeps bob's XDG_RUNTIME_DIR, which alice cannot write.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(owned_dir(world / "bobs", uid=UID + 1)))
    owned_dir(world / "run-user" / str(UID + 1), uid=UID + 1)
    assert both(UID) == f"{world}/tmp/qumran-{UID}/qumrand.sock"


def test_root_is_the_system_instance_whatever_the_environment(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(owned_dir(world / "xdg", uid=0)))
    assert both(0) == "/run/qumran/qumrand.sock"


def test_qumran_socket_overrides_everything(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUMRAN_SOCKET", "/somewhere/q.sock")
    assert both(UID) == "/somewhere/q.sock"
    assert both(0) == "/somewhere/q.sock"


@pytest.mark.parametrize("squat", ["other-owner", "open-mode", "symlink"])
def test_the_client_trusts_no_squatted_tmp_folder(world: Path, squat: str) -> None:
    """Anyone can make /tmp/qumran-UID first; a socket in it could be anyone's daemon."""
    folder = world / "tmp" / f"qumran-{UID}"
    if squat == "other-owner":
        owned_dir(folder, uid=UID + 1)
    elif squat == "open-mode":
        owned_dir(folder).chmod(0o755)
    else:
        folder.symlink_to(owned_dir(world / "elsewhere"))
    with pytest.raises(ConnectionFailed, match=f"{folder} is not a private folder of yours"):
        client_paths.default_socket_path(UID)


def test_the_settings_file_is_etc_for_root_and_xdg_config_for_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config_paths.config_file(0) == Path("/etc/qumran/qumrand.toml")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_paths.config_file(UID) == tmp_path / "qumran" / "qumrand.toml"

"""The CLI's fast path: command lines read without argparse, answers read without json.

The quick reader must give exactly what argparse gives, or step aside (None) so argparse
reads the line; the JSON reader and writer must give exactly what json.loads and
json.dumps give. And the common commands, run for real against a stand-in daemon, must
not import argparse, json or re -- through the installed launcher (bin/qumran) too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import StubDaemon, stub, vm  # noqa: F401  (the stand-in daemon and its fixture)

from qumran.cli import commands, quick
from qumran.cli.main import build_parser
from qumran.client.jsonread import loads
from qumran.client.jsonwrite import dumps

REPO = Path(__file__).resolve().parents[2]

LINES = [
    ["list"],
    ["list", "--all"],
    ["--json", "list", "--all"],
    ["list", "--all", "--json"],
    ["--socket", "/tmp/s", "list"],
    ["list", "--socket", "/tmp/s"],
    ["--socket", "/a", "list", "--socket", "/b"],
    ["dominfo", "demo"],
    ["dominfo", "--json", "demo"],
    ["dominfo", "-"],
    ["dominfo", "list"],
    ["domstate", "demo", "--reason"],
    ["define", "vm.yaml", "--force"],
    ["undefine", "demo"],
    ["start", "demo", "--console"],
    ["destroy", "demo"],
    ["autostart", "demo", "--disable"],
    ["events", "--since", "12"],
    ["events", "--since", "x"],
    ["events", "--follow"],
    ["console", "demo", "--until", "READY", "--timeout", "2.5"],
    ["console", "demo", "--timeout", "soon"],
    ["host"],
    ["web"],
    ["image", "demo"],
    ["vol-create", "web1", "8G", "--backing", "debian-12", "--pool", "fast"],
    ["vol-create", "--json", "web1", "8G", "--format", "raw"],
    ["vol-info", "web1", "--owner", "0"],
    ["vol-info", "web1", "--owner", "no-such-user-here"],
    ["vol-list"],
    ["vol-list", "fast"],
    ["pool-define", "fast", "/srv/fast"],
    ["pool-list"],
    ["net-list"],
    ["net-list", "--json"],
    ["net-define", "lan.yaml"],
    ["net-start", "lan"],
    ["net-destroy", "lan", "--force"],
    ["net-destroy", "--json", "lan"],
    ["net-autostart", "lan", "--disable"],
    ["net-info", "default"],
    ["net-dhcp-leases", "default", "--json"],
    ["net-undefine", "lan"],
    ["net-undefine", "--force", "lan"],
    # What the quick reader leaves to argparse: help, mistakes, unusual spellings.
    [],
    ["--help"],
    ["list", "-h"],
    ["list", "--al"],
    ["list", "extra"],
    ["dominfo"],
    ["dominfo", "a", "b"],
    ["dominfo", "--", "-x"],
    ["--socket"],
    ["--socket", "--json", "list"],
    ["--socket=/tmp/s", "list"],
    ["--all", "list"],
    ["nosuchcommand"],
    ["events", "--since"],
    ["events", "--since", "-1"],
]


def argparse_reading(argv: list[str]) -> dict[str, Any] | str:
    """What argparse makes of ``argv``: its namespace, or "exit N" (help or an error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return f"exit {exc.code}"
    return vars(args)


@pytest.mark.parametrize("argv", LINES, ids=" ".join)
def test_the_quick_reader_agrees_with_argparse_or_steps_aside(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = argparse_reading(argv)
    capsys.readouterr()
    got = quick.parse(argv, commands.COMMANDS)
    if got is None:
        return  # argparse reads it: the same answer by construction
    assert vars(got) == expected


def test_the_quick_reader_takes_the_common_lines() -> None:
    for argv in (["list", "--all"], ["dominfo", "demo"], ["--json", "undefine", "demo"],
                 ["define", "vm.yaml"], ["start", "demo"], ["destroy", "demo"]):  # fmt: skip
        assert quick.parse(argv, commands.COMMANDS) is not None, argv
    assert quick.parse(["image", "demo"], commands.COMMANDS) is None  # sub-subcommands
    assert quick.parse(["list", "--help"], commands.COMMANDS) is None


def test_a_command_declaring_more_than_the_reader_knows_goes_to_argparse() -> None:
    def odd(p: argparse.ArgumentParser) -> None:
        p.add_argument("names", nargs="+")

    command = commands.Command("odd", "", odd, lambda args: 0)
    assert quick.parse(["odd", "a"], [command]) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


@given(json_values, st.sampled_from(["", " ", "\n", "\t \r\n"]))
def test_the_json_reader_reads_what_json_reads(value: Any, space: str) -> None:
    text = space + json.dumps(value, ensure_ascii=False) + space
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text", ["", " ", "{", "[1,]", "1 2", '{"a": 1} x', "nul", '"\x01"', "[1] ]", '{"a" 1}']
)
def test_a_malformed_answer_raises_what_json_raises(text: str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        loads(text)
    assert str(got.value) == str(expected.value)


def test_the_json_reader_knows_json_s_constants() -> None:
    assert loads("[Infinity, -Infinity]") == [math.inf, -math.inf]
    assert math.isnan(loads("NaN"))


@given(json_values)
def test_the_json_writer_writes_what_json_writes(value: Any) -> None:
    assert dumps(value) == json.dumps(value)


def test_the_json_writer_refuses_what_json_refuses() -> None:
    for value in (object(), {"a": {1, 2}}, {(1, 2): 3}, b"x"):
        with pytest.raises(TypeError) as expected:
            json.dumps(value)
        with pytest.raises(TypeError) as got:
            dumps(value)
        assert str(got.value) == str(expected.value)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(loop)
    assert dumps([math.inf, -math.inf]) == "[Infinity, -Infinity]"


DEFINITION = "name: web2\nmemory: 256M\nboot:\n  kernel: vmlinuz\n"


@pytest.mark.parametrize(
    "argv",
    [["list", "--all"], ["dominfo", "web1"], ["undefine", "web1"], ["define", "DEF"]],
)
def test_common_commands_import_neither_argparse_nor_json_nor_re(
    stub: StubDaemon,  # noqa: F811  (the fixture imported from test_cli)
    argv: list[str],
    tmp_path: Path,
) -> None:
    stub.vms["web1"] = vm("web1")
    (tmp_path / "web2.yaml").write_text(DEFINITION)
    argv = [str(tmp_path / "web2.yaml") if a == "DEF" else a for a in argv]
    # The interpreter's own start-up (site) is left out: only what qumran adds counts.
    script = (
        "import sys; before = set(sys.modules)\n"
        "from qumran.cli.main import main\n"
        f"status = main({argv!r})\n"
        "print(' '.join(sorted(set(sys.modules) - before)), file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, env={**os.environ, "QUMRAN_SOCKET": stub.path},
        timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = set(proc.stderr.split())
    assert "qumran.client.wire" in imported  # the report is real
    assert imported & {"argparse", "json", "re", "enum", "typing", "collections", "yaml",
                        "pathlib"} == set()  # fmt: skip
    if argv[0] == "define":
        assert stub.requests[-1][2] == {"name": "web2", "memory": "256M",
                                        "boot": {"kernel": str(tmp_path / "vmlinuz")}}  # fmt: skip


def launcher(tmp_path: Path) -> str:
    """bin/qumran as pip installs it: its ``#!python`` line made this interpreter's."""
    text = (REPO / "bin" / "qumran").read_text()
    assert text.startswith("#!python\n")  # what pip rewrites
    path = tmp_path / "qumran"
    path.write_text(f"#!{sys.executable}\n" + text.split("\n", 1)[1])
    path.chmod(0o755)
    return str(path)


def test_pyproject_installs_the_launcher_as_qumran() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["script-files"] == ["bin/qumran"]
    assert "qumran" not in project["project"]["scripts"]  # one `qumran`, the lean one


@pytest.mark.parametrize("argv", [["list", "--all"], ["define", "DEF"]])
def test_the_installed_launcher_imports_no_re(
    stub: StubDaemon,  # noqa: F811
    tmp_path: Path,
    argv: list[str],
) -> None:
    (tmp_path / "web2.yaml").write_text(DEFINITION)
    argv = [str(tmp_path / "web2.yaml") if a == "DEF" else a for a in argv]
    proc = subprocess.run(
        [launcher(tmp_path), *argv],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "QUMRAN_SOCKET": stub.path, "PYTHONVERBOSE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = {line.split()[1].strip("'") for line in proc.stderr.splitlines()
                if line.startswith("import ") and "#" in line}  # fmt: skip
    assert "qumran.client.wire" in imported  # the report is real
    assert imported & {"re", "json", "argparse", "yaml", "pathlib", "typing"} == set()
    assert proc.stdout.startswith(" Id" if argv[0] == "list" else "VM 'web2' defined")


def test_the_launcher_ends_lean_commands_at_once_and_others_in_order(
    stub: StubDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    stub.vms["web1"] = vm("web1")
    env = {**os.environ, "QUMRAN_SOCKET": stub.path, "PYTHONVERBOSE": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([launcher(tmp_path), *argv], capture_output=True, text=True,
                              env=env, timeout=30, check=False)  # fmt: skip

    # An orderly exit cleans up module by module ("# cleanup[...]" in verbose mode).
    lean = run("dominfo", "web1")
    assert (lean.returncode, lean.stdout.splitlines()[0]) == (0, "Name:           web1")
    assert "# cleanup" not in lean.stderr
    failed = run("dominfo", "nosuch")
    assert failed.returncode == 1
    assert "error: no VM named 'nosuch'" in failed.stderr
    assert "# cleanup" not in failed.stderr
    other = run("--help")  # argparse's exit, not a lean command's
    assert other.returncode == 0 and "# cleanup" in other.stderr


def test_the_launcher_stops_quietly_when_the_reader_goes_away(
    stub: StubDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    for i in range(2000):  # more than a pipe's buffer holds
        stub.vms[f"vm{i:04d}"] = vm(f"vm{i:04d}")
    read, write = os.pipe()
    os.close(read)  # nobody will read
    proc = subprocess.run([launcher(tmp_path), "list", "--all"], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=30, check=False,
                          env={**os.environ, "QUMRAN_SOCKET": stub.path})  # fmt: skip
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")

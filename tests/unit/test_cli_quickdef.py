"""The quick definition reader (qumran.cli.quickdef) against the full one.

For every file it reads, it must return exactly what ``read_definition`` returns; for
everything else it must step aside (None), and the full reader answers. Both are run on
documents generated in many YAML spellings, on random lines, and on real files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qumran.cli import quickdef
from qumran.config.files import parse_definition, read_definition
from qumran.errors import InvalidArgument

FAILED = "refused"


def full(text: str) -> Any:
    try:
        return parse_definition(text)
    except InvalidArgument:
        return FAILED


def quick(text: str) -> Any:
    try:
        return quickdef.parse(text)
    except quickdef._NotSimple:
        return None


def check(text: str) -> Any:
    """The quick reader's answer, after checking it against the full reader's."""
    got = quick(text)
    if got is not None:
        expected = full(text)
        assert got == expected, text
        # bool is an int: the types must agree too (True is not 1 to the daemon's schema)
        assert json.dumps(got) == json.dumps(expected), text
    return got


# --- the shapes it must take -----------------------------------------------------------------

COMMON = [
    # bench/vslib/qumran_stack.py
    'name: qbench-0001\nmemory: 256M\nvcpus: 1\nboot:\n  kernel: "/tmp/q/vmlinuz"\n'
    '  initrd: "/tmp/q/initrd.img"\n  cmdline: "console=ttyS0 quiet panic=-1"\n',
    # bench/cli_startup.sh
    "name: bench000\nmemory: 64M\nboot:\n  kernel: vmlinuz\n",
    # docs/storage.md, and disks at the key's own indentation
    "name: web1\ndisks:\n  - volume: web1          # a volume of the VM owner's pool ...\n"
    '    pool: default         # ... "default" unless given\n'
    "  - path: /srv/data.img   # or a path, as before: exactly one of the two\n",
    "name: web1\nmemory: 2G\ndisks:\n- path: ./disk.qcow2\n  format: qcow2\n  readonly: no\n"
    "serial: true\ngraphics: off\nautostart: ~\n",
    "# a comment first\n\nname: 'it''s'   # quoted\nvcpus: 4\nhypervisor: native\n"
    "boot:\n    kernel: ../k/vmlinuz\n    cmdline: console=ttyS0 root=/dev/vda1 rw\n",
    "name: n\nnics:\n  - network: default\n  - type: user\n    forward:\n"
    "      - tcp:127.0.0.1:2222-:22\n",
]


@pytest.mark.parametrize("text", COMMON)
def test_common_definitions_are_read_quickly_and_the_same(text: str) -> None:
    assert check(text) is not None


NOT_SIMPLE = [
    "mac: 52:54:00:12:34:56\n",  # YAML 1.1: a base-60 integer
    "n: 010\n", "n: 0o10\n", "n: 0x1F\n", "n: 0xA\n", "n: 1_000\n", "n: 1.5\n",
    "n: 1e3\n", "n: .inf\n", "n: 2024-01-01\n", "n: +1\n", "n: -0\n",
    "on: 1\n", "null: 1\n", "'q': 1\n", "1: x\n", "a b: 1\n", "a : 1\n",
    "a: [1, 2]\n", "a: {b: 1}\n", "a: |\n  text\n", "a: >\n  text\n", "a: &x 1\nb: *x\n",
    "a: !!str 1\n", 'a: "esc\\"aped"\n', "a: 'open\n  closed'\n", 'a: "open\n  closed"\n',
    "a: plain\n  continued\n", "a: 1\na: 2\n", "a:\n\t- b\n", "a: 1\r\n", "---\na: 1\n",
    "%YAML 1.1\n---\na: 1\n", "- a\n", "a: 1\n- b\n", "  a: 1\n", "", "# only\n",
    "a:\n  - - x\n", "a:\n  -\n    b: 1\n", "? a\n: 1\n", "a: x#y\n", "a: -x\n",
    "a: caf\u00e9\n", "a: 1\n  b: 2\n", "a:\n    b: 1\n  c: 2\n", "a: b: c\n",
    "a: b:\n", "a: =\n", "a: <<\n", "a: `x`\n", "a: %x\n", "a: @x\n",
    "n: " + "9" * 40 + "\n",
]  # fmt: skip


@pytest.mark.parametrize("text", NOT_SIMPLE)
def test_what_it_does_not_know_goes_to_the_full_reader(text: str) -> None:
    assert check(text) is None


# --- generated documents, in many spellings -----------------------------------------------

# Values spelled as they appear in the file: plain, quoted, and everything YAML 1.1 reads
# as something else than it looks.
SCALARS = [
    "web", "web-1.example", "256M", "8GiB", "16", "0", "-1", "-0", "007", "010", "1_000",
    "1:30", "52:54:00:12:34:56", "1.5", ".5", ".inf", "1e3", "1E", "0x1F", "0xA", "0b1",
    "2024-01-01", "~", "null", "Null", "NULL", "yes", "No", "on", "OFF", "y", "n", "true",
    "False", "x #c", "x#c", "a: b", "a:b", "a:", "./k", "../k", "~/k", "/abs/k", ".k", "..",
    "...", "console=ttyS0 panic=-1", "a  b", "_x", '"quoted"', '"esc \\" q"', '"a: b # c"',
    '""', "''", "'single'", "'it''s'", "'a # b'", "'open", '"open', "[a, b]", "{a: 1}", "|",
    ">", "&a x", "*a", "!!str 1", "%x", "@x", "`x", "=", "<<", "-x", "+1", "9" * 33, "9" * 32,
    "a,b", "k=v,w", "100%", "x@y", "a~b", "tcp::8080-:80", '"x" y', "'x'y", '"x"  # c',
]  # fmt: skip
KEYS = ["name", "memory", "boot", "kernel", "disks", "path", "a-b", "_x", "Key", "on", "yes",
        "null", "1x", "x y", '"q"', "k:"]  # fmt: skip


@pytest.mark.parametrize("value", SCALARS)
@pytest.mark.parametrize(
    "layout", ["a: {}\n", "a:   {}   # c\n", "a:\n  - {}\n", "a:\n- b: {}\n  c: 1\n"]
)
def test_every_spelling_of_a_value_reads_the_same(layout: str, value: str) -> None:
    check(layout.format(value))


# Mostly what definitions hold, so that most documents are the quick reader's to read
# and a wrong answer of its shows; the rest, one in a few, are the odd spellings above.
PLAIN = ["web", "512M", "2", "-1", "0", "/abs/k", "k", "./k", "true", "no", "~", "'q'",
         '"q q"', "console=ttyS0 quiet", "x # c"]  # fmt: skip
leaf = st.sampled_from(PLAIN * 12 + SCALARS)
keys = st.sampled_from(KEYS[:5] * 8 + KEYS)
# Mappings (lists of pairs, keys unique: a repeated key is the full reader's) of leaves,
# mappings and lists of either; now and then a list in a list.
mapping = st.deferred(
    lambda: st.lists(st.tuples(keys, value), min_size=1, max_size=4, unique_by=lambda kv: kv[0])
)
value = st.deferred(
    lambda: (
        leaf
        | leaf
        | mapping
        | st.lists(leaf | mapping, min_size=1, max_size=3)
        | st.lists(st.lists(leaf, min_size=1, max_size=2), min_size=1, max_size=2)
    )
)


@st.composite
def spelling(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "step": draw(st.integers(1, 4)),
        "seq_indent": draw(st.booleans()),  # list items under a key: indented, or not
        "comments": draw(st.booleans()),
        "blank": draw(st.booleans()),
        "pad": draw(st.sampled_from(["", " ", "  "])),  # after the colon's space
    }


def render(node: Any, style: dict[str, Any], indent: int = 0) -> list[str]:
    """``node`` (a leaf's text, a list, or a list of (key, value) pairs) as YAML lines."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, list) and node and isinstance(node[0], tuple):
        for key, value in node:
            if isinstance(value, str):
                lines.append(f"{pad}{key}: {style['pad']}{value}")
            else:
                lines.append(f"{pad}{key}:" + ("  # c" if style["comments"] else ""))
                step = 0 if isinstance(value, list) and value and not isinstance(
                    value[0], tuple) and not style["seq_indent"] else style["step"]  # fmt: skip
                lines += render(value, style, indent + step)
            if style["blank"]:
                lines.append("")
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                lines.append(f"{pad}- {item}")
            else:
                inner = render(item, style, indent + 2)
                if not inner:
                    continue
                lines.append(f"{pad}- {inner[0].lstrip(' ')}")
                lines += inner[1:]
            if style["comments"]:
                lines.append(f"{pad}# between items")
    return lines


@settings(max_examples=400, deadline=None)
@given(mapping, spelling())
def test_generated_documents_read_the_same(doc: list[Any], style: dict[str, Any]) -> None:
    check("\n".join(render(doc, style)) + "\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(
    [*(f"{k}: {v}" for k in KEYS[:6] for v in SCALARS[::7]), *(f"{k}:" for k in KEYS),
     *(f"- {v}" for v in SCALARS[::5]), "- a: 1", "-", "# c", "", "  # c"]
)), min_size=1, max_size=8))  # fmt: skip
def test_random_lines_read_the_same(lines: list[tuple[int, str]]) -> None:
    check("".join(" " * indent + line + "\n" for indent, line in lines))


def test_the_quick_reader_is_used_for_generated_common_shapes() -> None:
    # A guard against a reader that steps aside for everything: plain shapes are its own.
    style = {"step": 2, "seq_indent": True, "comments": True, "blank": False, "pad": ""}
    doc = [("name", "web"), ("disks", [[("path", "/abs/k"), ("kernel", "'x'")]])]
    assert check("\n".join(render(doc, style)) + "\n") is not None


# --- files: paths resolved as the full reader resolves them -------------------------------


def test_paths_are_resolved_as_the_full_reader_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    text = (
        "name: web\nboot:\n  kernel: vmlinuz\n  initrd: ../x/./initrd.img\ncloud_init:\n"
        "  user_data: ~/user-data\ndisks:\n  - path: /abs//disk.img\n  - path: disk2.img\n"
        "  - volume: v\n"
    )
    (real / "web.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    for path in ("link/web.yaml", str(tmp_path / "link" / "web.yaml"), "real/../link/web.yaml"):
        got = quickdef.read_definition(path)
        assert got is not None
        assert got == read_definition(path)
    assert got["boot"]["kernel"] == str(real / "vmlinuz")
    assert got["cloud_init"]["user_data"] == os.path.expanduser("~/user-data")


@pytest.mark.parametrize("name", ["web.toml", "web.json", "WEB.TOML"])
def test_toml_and_json_go_to_the_full_reader(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("name: web\n")
    assert quickdef.read_definition(str(tmp_path / name)) is None


def test_unreadable_large_and_non_ascii_files_go_to_the_full_reader(tmp_path: Path) -> None:
    assert quickdef.read_definition(str(tmp_path / "missing.yaml")) is None
    assert quickdef.read_definition(str(tmp_path)) is None  # a folder
    big = tmp_path / "big.yaml"
    big.write_text("name: web\n" + "# padding\n" * (quickdef.MAX_FILE_BYTES // 10 + 1))
    assert quickdef.read_definition(str(big)) is None
    utf8 = tmp_path / "utf8.yaml"
    utf8.write_text("name: caf\u00e9\n")
    assert quickdef.read_definition(str(utf8)) is None


def test_it_keeps_the_full_readers_limits() -> None:
    from qumran.config import files

    assert quickdef.MAX_FILE_BYTES == files.MAX_FILE_BYTES
    assert quickdef.MAX_NUMBER_CHARS == files.MAX_NUMBER_CHARS
    assert quickdef.MAX_NESTING < files.MAX_DEPTH
    assert quickdef._PATH_FIELDS == files._PATH_FIELDS


def test_a_pipe_or_fifo_is_left_unread_for_the_full_reader(tmp_path: Path) -> None:
    # `qumran define /dev/stdin`: what the quick reader read would be gone for the other.
    read, write = os.pipe()
    os.write(write, b"name: web\n")
    os.close(write)
    try:
        assert quickdef.read_definition(f"/proc/self/fd/{read}") is None
        assert os.read(read, 100) == b"name: web\n"
    finally:
        os.close(read)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert quickdef.read_definition(str(fifo)) is None  # at once: no writer awaited


def test_define_from_stdin_reads_the_whole_document(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from qumran.cli import quickdef\n"
        "from qumran.config.files import read_definition\n"
        "doc = quickdef.read_definition('/dev/stdin') or read_definition('/dev/stdin')\n"
        "print(json.dumps(doc))\n"
    )
    for text in ("name: web\nvcpus: 2\n", "name: web\nnics: [{type: user}]\n"):
        proc = subprocess.run([sys.executable, "-c", script], input=text, capture_output=True,
                              text=True, timeout=30, check=True)  # fmt: skip
        assert json.loads(proc.stdout)["name"] == "web"

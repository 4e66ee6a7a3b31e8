"""The image cache: import checks with real qemu-img on real files, list and rm, and
nothing half-written left behind by a failure or Ctrl-C."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest

from qumran.cli.main import main
from qumran.images import cache, disk, imports, progress, run, tools
from qumran.images.errors import BadImageName, ImageError, ImageNotFound, ImageRefused

pytestmark = pytest.mark.skipif(tools.find("qemu-img") is None, reason="needs qemu-img")
MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> cache.ImageStore:
    return cache.ImageStore(tmp_path / "images")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def raw_disk(path: Path) -> Path:
    """A 64 MiB raw disk with a partition table (sfdisk), or a hand-made MBR without it."""
    if tools.find("sfdisk"):
        disk.make_disk(path, disk.layout(64 * MIB), 0x51)
    else:
        with path.open("wb") as f:
            f.truncate(64 * MIB)
            f.seek(510)
            f.write(b"\x55\xaa")
    return path


def entries(store: cache.ImageStore) -> list[str]:
    """Everything in the cache directory but the lock files."""
    if not store.root.exists():
        return []
    return sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".lock-"))


def test_a_raw_disk_is_imported_and_listed(store: cache.ImageStore, tmp_path: Path) -> None:
    source = raw_disk(tmp_path / "vendor.img")
    image = imports.import_image("vendor", source, store)
    assert entries(store) == ["vendor"]
    assert image.disk == store.root / "vendor" / "disk.raw"
    assert image.disk.read_bytes() == source.read_bytes()
    assert image.disk.stat().st_blocks * 512 < 4 * MIB  # still sparse
    assert (image.info.format, image.info.virtual_size, image.info.source) == (
        "raw", 64 * MIB, "imported",
    )  # fmt: skip
    [listed] = store.list()
    assert listed.to_dict()["digest"] == image.info.digest
    assert len(image.info.digest) == 64


def test_a_qcow2_is_imported_as_qcow2(store: cache.ImageStore, tmp_path: Path) -> None:
    source = tmp_path / "cloud.qcow2"
    qemu_img("create", "-f", "qcow2", str(source), "1G")
    image = imports.import_image("cloud", source, store)
    assert image.disk.name == "disk.qcow2"
    assert (image.info.format, image.info.virtual_size) == ("qcow2", 1 << 30)
    out = subprocess.run(["qemu-img", "check", str(image.disk)], capture_output=True)
    assert out.returncode == 0


def _refused(store: cache.ImageStore, source: Path, words: str) -> None:
    with pytest.raises(ImageRefused, match=words):
        imports.import_image("x", source, store)
    assert entries(store) == []  # not even a staging directory


def test_a_qcow2_with_a_backing_file_is_refused(store: cache.ImageStore, tmp_path: Path) -> None:
    # -u: the backing file need not exist; it could name anything on the host.
    source = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(source), "1M")
    _refused(store, source, r"backing file \(/etc/shadow\)")


def test_a_qcow2_with_an_external_data_file_is_refused(
    store: cache.ImageStore, tmp_path: Path
) -> None:
    source = tmp_path / "split.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(source),
             "1M")  # fmt: skip
    _refused(store, source, "keeps its data in another file")


def test_a_text_file_is_refused(store: cache.ImageStore, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("this is not a disk\n" * 100)
    _refused(store, source, "neither a qcow2 image nor a raw disk image")


def test_zeros_are_not_a_disk(store: cache.ImageStore, tmp_path: Path) -> None:
    source = tmp_path / "zeros.img"
    source.write_bytes(bytes(MIB))
    _refused(store, source, "no partition table")


def test_other_formats_are_refused_with_how_to_convert(
    store: cache.ImageStore, tmp_path: Path
) -> None:
    source = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", str(source), "1M")
    _refused(store, source, "is a vmdk image.*qemu-img convert -O qcow2")


def test_what_is_not_a_file_is_refused(store: cache.ImageStore, tmp_path: Path) -> None:
    _refused(store, tmp_path / "absent.img", "does not exist")
    _refused(store, tmp_path, "not a regular file")


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "UPPER", "x" * 64])
def test_names_with_paths_are_refused(store: cache.ImageStore, tmp_path: Path, name: str) -> None:
    with pytest.raises(BadImageName):
        imports.import_image(name, raw_disk(tmp_path / "d.img"), store)


def test_an_existing_name_is_replaced_only_when_asked(
    store: cache.ImageStore, tmp_path: Path
) -> None:
    first = imports.import_image("img", raw_disk(tmp_path / "a.img"), store)
    source = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", str(source), "2M")
    with pytest.raises(ImageError, match="exists: remove it first"):
        imports.import_image("img", source, store)
    assert store.get("img").info == first.info
    second = imports.import_image("img", source, store, replace=True)
    assert second.info.format == "qcow2"
    assert entries(store) == ["img"]
    assert sorted(p.name for p in second.path.iterdir()) == ["disk.qcow2", "image.json"]


def test_rm_removes_only_the_named_image(store: cache.ImageStore, tmp_path: Path) -> None:
    imports.import_image("a", raw_disk(tmp_path / "a.img"), store)
    imports.import_image("b", raw_disk(tmp_path / "b.img"), store)
    store.remove("a")
    assert [i.name for i in store.list()] == ["b"]
    with pytest.raises(ImageNotFound, match="no image named 'a'"):
        store.remove("a")
    assert entries(store) == ["b"]


def test_list_skips_what_is_not_an_image_entry(store: cache.ImageStore, tmp_path: Path) -> None:
    imports.import_image("good", raw_disk(tmp_path / "a.img"), store)
    (store.root / "demo").mkdir()  # the demo guest's kernel and initramfs live here
    (store.root / "demo" / "vmlinuz").write_bytes(b"kernel")
    (store.root / "broken").mkdir()
    (store.root / "broken" / "image.json").write_text("{not json")
    assert [i.name for i in store.list()] == ["good"]
    with pytest.raises(ImageError, match="not an image entry"):
        imports.import_image("demo", raw_disk(tmp_path / "b.img"), store)
    assert (store.root / "demo" / "vmlinuz").read_bytes() == b"kernel"


def test_a_failed_build_leaves_nothing(store: cache.ImageStore) -> None:
    with pytest.raises(KeyboardInterrupt), store.staging("img") as stage:
        (stage.path / "disk.qcow2").write_bytes(b"half")
        raise KeyboardInterrupt
    assert entries(store) == []
    assert store.find("img") is None


def test_leftovers_of_a_killed_build_are_removed_by_the_next(store: cache.ImageStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / ".staging-img-dead").mkdir()
    (store.root / ".staging-img-dead" / "disk.raw").write_bytes(b"x")
    (store.root / ".staging-other-dead").mkdir()  # another name's: not ours to touch
    with store.staging("img") as stage:
        assert not (store.root / ".staging-img-dead").exists()
        (stage.path / "disk.raw").write_bytes(b"disk")
        stage.commit(cache.ImageInfo("img", "disk.raw", "raw", "d" * 64, cache.now(),
                                     "built", 4))  # fmt: skip
    assert entries(store) == [".staging-other-dead", "img"]


def test_ctrl_c_stops_the_running_program(tmp_path: Path) -> None:
    """Interrupted while a tool runs, the tool is stopped and waited for."""
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}; echo started; exec sleep 60"

    def interrupt(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.run(["sh", "-c", script], "sleeping", on_line=interrupt)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failing_tool_is_one_error_with_its_last_words() -> None:
    with pytest.raises(ImageError, match=r"testing: sh failed \(exit 3\): one / two"):
        run.run(["sh", "-c", "echo one; echo two >&2; exit 3"], "testing")


def test_a_missing_tool_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(tools, "find", lambda tool: None)
    with pytest.raises(ImageError) as err:
        tools.require(tools.BUILD_TOOLS, "building debian-12")
    message = err.value.message
    assert "\n" not in message
    assert "apt-get install e2fsprogs fdisk grub-common mmdebstrap qemu-utils tar" in message


def test_progress_as_plain_lines() -> None:
    out = io.StringIO()
    shown = progress.for_stream(2, out)
    shown.phase("one")
    for i in range(11):
        shown.fraction(i / 10)
    shown.phase("two")
    shown.finish("done")
    lines = out.getvalue().splitlines()
    assert lines[:5] == ["[1/2] one", "[1/2] one: 25%", "[1/2] one: 50%", "[1/2] one: 75%",
                         "[2/2] two"]  # fmt: skip
    assert lines[5].startswith("done (0:0")


def test_progress_on_a_terminal_redraws_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    shown = progress.for_stream(2, out)
    assert isinstance(shown, progress.Bar)
    shown.phase("one")
    shown.fraction(0.5, "downloading")
    text = out.getvalue()
    assert "\r[1/2] one" in text and "[############------------]  50%" in text
    assert text.rstrip().endswith("downloading")


def test_the_cli_refuses_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert main(["image", "import", "notes", str(text)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "cache" / "qumran" / "images" / "notes").exists()


def test_the_cli_imports_lists_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = raw_disk(tmp_path / "vendor.img")
    assert main(["image", "import", "vendor", str(source)]) == 0
    capsys.readouterr()
    assert main(["image", "list"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["Name", "Size", "Digest", "Created", "Path"]
    assert "vendor" in table and str(tmp_path / "cache" / "qumran" / "images" / "vendor") in table
    assert main(["image", "list", "--json"]) == 0
    assert '"name": "vendor"' in capsys.readouterr().out
    assert main(["image", "rm", "vendor"]) == 0
    assert main(["image", "rm", "vendor"]) == 1
    assert "no image named 'vendor'" in capsys.readouterr().err


def test_concurrent_imports_of_one_name_do_not_interleave(
    store: cache.ImageStore, tmp_path: Path
) -> None:
    sources = [raw_disk(tmp_path / f"{i}.img") for i in range(3)]
    errors: list[BaseException] = []

    def one(source: Path) -> None:
        try:
            imports.import_image("same", source, store, replace=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert entries(store) == ["same"]
    assert store.get("same").disk.stat().st_size == 64 * MIB

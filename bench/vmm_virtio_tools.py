"""The bench guest's initramfs: the demo initramfs plus Debian's ``fio`` and ``iperf3``.

The demo guest is busybox only. The benchmark needs the host's dynamically linked ``fio``
and ``iperf3`` (``apt-get install fio iperf3``), so this adds them with every shared library
``ldd`` lists, each at the path ``ldd`` printed (the dynamic loader at its ELF interpreter
path, /lib64/ld-linux-x86-64.so.2). There is no ld.so.cache in the guest: run the tools with
``LD_LIBRARY_PATH=`` :data:`LIBRARY_PATH`. Built once on the host (the test host sees the
host's file system read-only and would gzip ~80 MB under TCG) and cached next to the demo
image; run this file to (re)build it.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from qumran.images import initramfs
from qumran.images.demo import DemoImage

TOOLS = ("fio", "iperf3")
LIBRARY_PATH = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu/ceph"
# "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def tool_paths() -> list[Path]:
    """The host's fio and iperf3, installed from Debian first if missing (as root)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env)
    paths = []
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            raise SystemExit(f"{tool} is not installed on this host: apt-get install -y {tool}")
        paths.append(Path(found))
    return paths


def shared_libraries(binary: Path) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    return [m.group(1) for m in _LDD_PATH.finditer(out.stdout)]


def tools_entries() -> list[initramfs.Entry]:
    """The tools and their libraries as archive files (content of the resolved path)."""
    files: dict[str, Path] = {}
    for binary in tool_paths():
        files[str(binary)] = binary
        for lib in shared_libraries(binary):
            files[lib] = Path(lib).resolve()
    return [initramfs.file(path, real.read_bytes(), 0o755) for path, real in files.items()]


def bench_initrd(demo: DemoImage, target: Path | None = None) -> Path:
    """The demo initramfs with the tools, cached; rebuilt when the demo image is newer."""
    target = target or demo.kernel.parent.parent / "bench-virtio" / "initrd.img"
    if target.is_file() and target.stat().st_mtime >= demo.initrd.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = initramfs.Archive(initramfs.parse(gzip.decompress(demo.initrd.read_bytes())))
    archive.extend(tools_entries())
    archive.write_gzip(target)
    return target


if __name__ == "__main__":
    from vmm_virtio import find_demo

    demo = find_demo()
    built = bench_initrd(demo)
    print(f"{built}: {built.stat().st_size >> 20} MiB", file=sys.stderr)

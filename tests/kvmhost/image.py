"""The KVM test host's boot image: Debian's generic kernel and a busybox initramfs.

The generic kernel (not the cloud one) is used because it has 9p and the AMD SVM KVM
module. The initramfs's ``/init`` loads the modules, mounts the host's root (9p tag
``hostroot``, read-only) under an overlay whose upper layer is RAM, mounts writable 9p
shares over it, then ``chroot``s into it to run the job the runner wrote (see runner.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from qumran.images import initramfs, rootfs
from qumran.images.debian import DebCache, default_cache_root
from qumran.images.initramfs import write_atomic
from qumran.images.kernel import vmlinux_from_bzimage
from qumran.images.kmod import ModuleTree

KERNEL_METAPACKAGE = "linux-image-amd64"
# virtio PCI + 9p for the shares, overlay for a writable root, kvm-amd for the point of it,
# vhost_net for qumran-vmm's vhost=on (it brings tun). Then what qumrand's networks use
# (tests/kvm/test_networks_kvm.py): bridges and veth pairs, and the nftables expressions
# of its `inet qumran` table (ct state, a nat chain, masquerade), with the crc32c that
# libcrc32c (which nf_tables needs) asks the crypto API for. All loaded at boot: the
# kernel's own module loading would run a modprobe that finds no modules in the test
# host's root (the host's), so nothing may be left for it to load on demand.
MODULES = (
    "virtio_pci", "9pnet_virtio", "9p", "overlay", "kvm_amd", "vhost_net",
    "bridge", "veth",
    "crc32c_generic", "nf_tables", "nft_ct", "nft_chain_nat", "nft_nat", "nft_masq",
)  # fmt: skip
# Bump when the image changes in a way image_key() cannot see (how it is built). Each key
# has its own cache directory, so checkouts that differ (worktrees, branches, a CI clone)
# never use or rebuild each other's image.
IMAGE_VERSION = "7"


@dataclass(frozen=True)
class HostImage:
    kernel: Path
    initrd: Path


def image_key() -> str:
    """IMAGE_VERSION plus a digest of what goes into the image: init and the module list."""
    digest = hashlib.sha256(repr((INIT_HEAD, INIT_TAIL, MODULES)).encode()).hexdigest()[:10]
    return f"{IMAGE_VERSION}-{digest}"


def default_cache_dir() -> Path:
    return default_cache_root() / "images" / f"kvmhost-v{image_key()}"


def build_image(cache_dir: Path | None = None, force: bool = False) -> HostImage:
    """Return the cached image, building it when missing or out of date."""
    target = (cache_dir if cache_dir is not None else default_cache_dir()).absolute()
    # The ELF kernel, booted through PVH: no xz decompression at every boot (kernel.py).
    image = HostImage(target / "vmlinux", target / "initrd.img")
    stamp = target / "version"
    key = image_key()
    fresh = stamp.is_file() and stamp.read_text() == key
    if fresh and not force and image.kernel.is_file() and image.initrd.is_file():
        return image
    target.mkdir(parents=True, exist_ok=True)
    debs = DebCache()
    kernel_root = debs.unpack(debs.resolve_kernel(KERNEL_METAPACKAGE))
    vmlinuz = sorted((kernel_root / "boot").glob("vmlinuz-*"))[-1]
    write_atomic(image.kernel, vmlinux_from_bzimage(vmlinuz.read_bytes()))
    host_archive(kernel_root, debs.unpack(rootfs.BUSYBOX_PACKAGE)).write_gzip(image.initrd)
    write_atomic(stamp, key.encode())
    return image


def host_archive(kernel_root: Path, busybox_root: Path) -> initramfs.Archive:
    tree = ModuleTree(kernel_root)
    modules = tree.load_order(MODULES)
    archive = initramfs.Archive(rootfs.base_entries())
    archive.extend(rootfs.busybox_entries(busybox_root))
    archive.extend(rootfs.module_entries(tree, modules))
    init = INIT_HEAD + rootfs.insmod_script(tree, modules) + INIT_TAIL
    archive.add(initramfs.file("init", init.encode(), 0o755))
    return archive


INIT_HEAD = """#!/bin/sh
# Qumran KVM test host: run one job from the host's file system, report its status, power off.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""

INIT_TAIL = r"""
# The job talks on the first serial port; the kernel's console is the second (the runner
# keeps it in a file and shows it when the job fails), so kernel messages never mix in.
exec </dev/null >/dev/ttyS0 2>&1
fail() { echo "kvmhost: $*"; poweroff -f; }
arg() { sed -n "s/.*kvmhost\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
job=$(arg job)
nonce=$(arg nonce)
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /rw /root
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || fail "cannot mount hostroot"
# The host root stays read-only; everything written inside lands in RAM and is dropped.
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /root \
    || fail "cannot mount the overlay root"
R=/root
# Writable host directories, each at its own path: lines of "<9p tag> <absolute path>".
while read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "$R$path"
    mount -t 9p -o "$opts" "$tag" "$R$path" || fail "cannot mount share $path"
done < "/lower$job/shares"
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
# /tmp, like the rest of the root, is the host's seen through the overlay: writable, in RAM.
# Raw output: no \n -> \r\n translation, so the job's bytes reach the runner unchanged.
stty -F /dev/ttyS0 -opost 2>/dev/null
# The job's root is the overlay moved onto / in a mount namespace of its own (what
# switch_root does), not a chroot: the kernel refuses user namespaces to a chrooted process
# (unshare(2): EPERM), and passt (qumran-vmm's --net passt) sandboxes itself in one.
run_job() {
    unshare -m sh -c "cd $R && mount -o move $R / && exec chroot . /bin/sh $job/job.sh"
}
echo "KVMHOST-START-$nonce"
if [ "$(arg tty)" = 1 ]; then
    run_job </dev/null
    status=$?
else
    # Through a pipe the job sees no terminal, as when the runner's output is a pipe.
    { run_job </dev/null; echo $? >/job-status; } 2>&1 | cat
    status=$(cat /job-status)
fi
echo "KVMHOST-EXIT-$nonce $status"
sync
poweroff -f
"""

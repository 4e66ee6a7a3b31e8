"""`qumran create NAME --image IMAGE`: a ready VM from an image, in one command.

What it does, in order, each step through the API like any other client:
1. a qcow2 volume in the caller's default pool, an overlay on the image's disk (the image
   itself is never written), of ``--disk-size``;
2. a definition: firmware boot from that volume, a user-mode NIC that forwards a free
   loopback port to the guest's SSH, and a ``cloud_init`` section (hostname, a user with
   the caller's SSH key and password-less sudo) or the caller's own user-data file;
3. the start (unless ``--no-start``); with ``--wait``, until cloud-init says on the console
   that it is done — its SSH host keys, printed there too, are kept for `qumran ssh`.
A step that fails undoes the ones before it, so a failed create leaves nothing behind;
once the VM is defined it stays (a failed start is reported, the VM kept to look at).
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path

from qumran.cli import output
from qumran.client import Client
from qumran.errors import AlreadyExists, InvalidArgument, NotFound, QumranError, Timeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from qumran.images.cache import Image

DEFAULT_USER = "debian"  # the login Debian's cloud images use
DEFAULT_MEMORY = "1G"
DEFAULT_DISK_SIZE = 8 << 30
KEY_NAMES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
# cloud-init's final stage prints this on the console when it is done with a boot.
CLOUD_INIT_DONE = re.compile(rb"Cloud-init v\. \S+ finished at")
CLOUD_INIT_FAILED = re.compile(rb"Failed to start .*cloud-(init|config|final)")


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the new VM's name")
    p.add_argument("--image", required=True, metavar="IMAGE", help="an image (`qumran image list`)")
    p.add_argument("--memory", default=DEFAULT_MEMORY, metavar="SIZE", help="default: 1G")
    p.add_argument("--vcpus", type=int, default=1, metavar="N", help="default: 1")
    p.add_argument(
        "--disk-size", metavar="SIZE",
        help="the VM's disk; the root file system grows to fill it (default: 8G, or the "
        "image's size if larger)",
    )  # fmt: skip
    p.add_argument(
        "--ssh-key", metavar="FILE",
        help="the public key to log in with (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub "
        "or id_rsa.pub, the first there is)",
    )  # fmt: skip
    p.add_argument(
        "--cloud-init", metavar="FILE",
        help="your own cloud-init user-data, passed to the guest as it is (then no user or "
        "key is added for you)",
    )  # fmt: skip
    p.add_argument("--user", default=DEFAULT_USER, metavar="USER", help="the guest user (debian)")
    p.add_argument("--pool", default="default", metavar="POOL", help="the pool for its disk")
    p.add_argument(
        "--network", metavar="NET",
        help="a NIC on this virtual network (`qumran net-list`) instead of user-mode "
        "networking with SSH forwarded; `qumran ssh` then uses the leased address",
    )  # fmt: skip
    p.add_argument(
        "--hypervisor", choices=("qemu", "native"), default="qemu",
        help="qemu (default: firmware boot from the disk) or native (qumran-vmm, which "
        "boots the image's own kernel and initrd)",
    )  # fmt: skip
    p.add_argument("--no-start", action="store_true", help="define it, do not start it")
    p.add_argument(
        "--wait", action="store_true", help="return once cloud-init has finished in the guest"
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, metavar="SECONDS",
        help="how long --wait waits (default: 900)",
    )  # fmt: skip


def do_create(args: argparse.Namespace) -> int:
    from qumran.config.units import format_size, parse_size
    from qumran.images.cache import ImageStore

    if args.wait and args.no_start:
        raise InvalidArgument("--wait needs the VM started: drop --no-start or --wait")
    say = _Progress(quiet=args.json)
    image = ImageStore().get(args.image)
    boot = boot_section(args, image)
    if args.cloud_init:
        user_data = Path(args.cloud_init).expanduser().absolute()
        if not user_data.is_file():
            raise NotFound(f"--cloud-init {args.cloud_init}: no such file")
        cloud_init: dict[str, Any] = {"user_data": str(user_data)}
    else:
        key_file, key = ssh_key(args.ssh_key)
        say(f"SSH key: {key_file}")
        user = {"name": args.user, "ssh_authorized_keys": [key], "sudo": "ALL=(ALL) NOPASSWD:ALL"}
        cloud_init = {"users": [user]}  # the host name: the VM's (docs/definitions.md)
    size = (
        parse_size(args.disk_size, "M")
        if args.disk_size
        else max(DEFAULT_DISK_SIZE, image.info.virtual_size)
    )
    port = None if args.network else free_port()
    client = Client(args.socket, timeout=600.0)

    if any(vm["name"] == args.name for vm in client.list_vms(all=True)):
        raise AlreadyExists(f"a VM named {args.name!r} already exists (`qumran dominfo "
                            f"{args.name}`); pick another name")  # fmt: skip
    volume = client.create_volume(
        args.name, size, pool=args.pool, format="qcow2", backing=str(image.disk)
    )
    say(f"disk: volume {volume['name']} in pool {args.pool}, {format_size(size)}, on {image.name}")
    doc = definition(args, volume["name"], cloud_init, port, boot)
    try:
        vm = client.define(doc)
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_volume(volume["name"], pool=args.pool)
        raise
    if port is None:
        say(f"VM {args.name} defined, on network {args.network} (`qumran domifaddr {args.name}`)")
    else:
        say(f"VM {args.name} defined; SSH forwarded from 127.0.0.1:{port}")
    if not args.no_start:
        started = time.monotonic()
        vm = client.start(args.name)
        say(f"VM {args.name} started (pid {vm['pid']})")
        if args.wait:
            say(f"waiting for cloud-init (watch it: qumran console {args.name})")
            wait_ready(client, args.name, args.timeout)
            vm = client.get_vm(args.name)
            say(f"{args.name} is ready after {time.monotonic() - started:.0f} s: "
                f"qumran ssh {args.name}")  # fmt: skip
    if args.json:
        output.print_json(vm)
    return 0


def boot_section(args: argparse.Namespace, image: Image) -> dict[str, Any]:
    """Firmware boot from the VM's disk for QEMU; for qumran-vmm, which loads a kernel
    itself and has no firmware, the kernel, initrd and command line built with the image."""
    if args.hypervisor != "native":
        return {"disk": 0}
    if image.kernel is None or not image.info.cmdline:
        raise InvalidArgument(
            f"--hypervisor native: image {image.name} has no kernel of its own beside its "
            "disk (only built images do, `qumran image build`); use --hypervisor qemu"
        )
    boot: dict[str, Any] = {"kernel": str(image.kernel), "cmdline": image.info.cmdline}
    if image.initrd is not None:
        boot["initrd"] = str(image.initrd)
    return boot


def definition(
    args: argparse.Namespace,
    volume: str,
    cloud_init: dict[str, Any],
    port: int | None,
    boot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The VM's definition: ``boot`` (firmware boot from its volume by default), one NIC —
    on ``args.network``, or user-mode with guest port 22 forwarded from ``port`` on the
    loopback address."""
    nic: dict[str, Any] = (
        {"network": args.network}
        if args.network
        else {"type": "user", "forward": [f"tcp:127.0.0.1:{port}-:22"]}
    )
    doc: dict[str, Any] = {
        "name": args.name,
        "memory": args.memory,
        "vcpus": args.vcpus,
        "boot": boot or {"disk": 0},
        "disks": [{"volume": volume, "pool": args.pool}],
        "nics": [nic],
        "cloud_init": cloud_init,
    }
    if getattr(args, "hypervisor", "qemu") != "qemu":
        doc["hypervisor"] = args.hypervisor
    return doc


def wait_ready(client: Client, name: str, timeout: float) -> None:
    """Until cloud-init reports done on ``name``'s console; learns its SSH host keys."""
    from qumran.cli.guestssh import learn_host_keys
    from qumran.client.console import ConsoleExit, watch_console

    why, seen = watch_console(client.socket_path, name, CLOUD_INIT_DONE, timeout=timeout)
    if why is ConsoleExit.TIMEOUT:
        failed = CLOUD_INIT_FAILED.search(seen)
        hint = f" (the console shows: {failed[0].decode(errors='replace')})" if failed else ""
        raise Timeout(f"cloud-init did not finish on {name} within {timeout:g} s{hint}; "
                      f"see `qumran console {name} --history`")  # fmt: skip
    if why is not ConsoleExit.UNTIL:
        vm = client.get_vm(name)
        raise QumranError(f"{name} stopped ({vm['state']}, {vm['reason']}) before cloud-init "
                          f"finished; see `qumran console {name} --history`")  # fmt: skip
    with contextlib.suppress(QumranError):  # not every image prints them; `qumran ssh` says so then
        learn_host_keys(client, client.get_vm(name), seen)


def ssh_key(given: str | None) -> tuple[str, str]:
    """The public key file to use and its key line."""
    if given:
        path = Path(given).expanduser()
        candidates = [path]
    else:
        ssh_dir = Path.home() / ".ssh"
        candidates = [ssh_dir / n for n in KEY_NAMES]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read the SSH key {path}: {exc}") from None
        line = text.splitlines()[0] if text else ""
        if not re.match(r"(ssh|ecdsa|sk)-\S+ [A-Za-z0-9+/]+=*( |$)", line):
            raise InvalidArgument(
                f"{path} is not an SSH public key (a line such as `ssh-ed25519 AAAA... "
                "you@host`); give the .pub file"
            )
        return str(path), line
    if given:
        raise NotFound(f"--ssh-key {given}: no such file")
    raise NotFound(
        "no SSH public key in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): make one with "
        "`ssh-keygen -t ed25519`, or give one with --ssh-key FILE, or your own --cloud-init"
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Progress:
    """One line per step on stdout; nothing with --json (stdout is the document then)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

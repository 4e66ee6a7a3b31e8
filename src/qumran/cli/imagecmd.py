"""`qumran image`: build, list, import and remove guest images in the user's cache.

These run in the CLI process itself, not in qumrand: an image is a file in the caller's
own cache (``~/.cache/qumran/images``), made with the caller's rights. The image modules
are imported inside the handlers, so `qumran list` never loads them.
"""

from __future__ import annotations

import os
import sys

from qumran.cli import output
from qumran.errors import InvalidArgument, InvalidState

TYPE_CHECKING = False  # typing and argparse stay out of the CLI's fast path (cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any

    from qumran.images.cache import Image

BUILDABLE = ("debian-12",)


def arguments(p: argparse.ArgumentParser) -> None:
    import argparse

    # --json after the action too (`qumran image list --json`); SUPPRESS keeps one given
    # earlier on the line.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (for scripts)"
    )
    actions = p.add_subparsers(dest="image", metavar="IMAGE", required=True)
    build = actions.add_parser(
        "build", parents=[common], help="build an image from Debian's packages and cache it"
    )
    build.add_argument("name", metavar="NAME", choices=BUILDABLE, help="one of: debian-12")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--snapshot",
        metavar="TIMESTAMP",
        help="use snapshot.debian.org at this time (e.g. 20250520T000000Z)",
    )
    build.add_argument("--mirror", metavar="URL", help="a Debian mirror (default deb.debian.org)")
    build.add_argument("--disk-size", metavar="SIZE", help="the disk's size (default 2G)")
    build.set_defaults(image_handler=do_build)

    actions.add_parser("list", parents=[common], help="list cached images").set_defaults(
        image_handler=do_list
    )

    rm = actions.add_parser("rm", parents=[common], help="remove a cached image")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument(
        "--force", action="store_true",
        help="remove it even if volumes are overlays on it (they stop working)",
    )  # fmt: skip
    rm.set_defaults(image_handler=do_rm)

    imp = actions.add_parser(
        "import", parents=[common], help="add a qcow2 or raw disk image to the cache"
    )
    imp.add_argument("name", metavar="NAME")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--force", action="store_true", help="replace an image of that name")
    imp.set_defaults(image_handler=do_import)

    demo = actions.add_parser(
        "demo", parents=[common], help="build the demo guest (kernel + initramfs)"
    )
    demo.add_argument("--force", action="store_true", help="rebuild even if cached")
    demo.set_defaults(image_handler=do_demo)


def run(args: argparse.Namespace) -> int:
    return int(args.image_handler(args))


def do_build(args: argparse.Namespace) -> int:
    from qumran.images import debian12, progress

    size = _size(args.disk_size) if args.disk_size else None
    rec = debian12.recipe(snapshot=args.snapshot, mirror=args.mirror, disk_size=size)
    shown = progress.for_stream(debian12.PHASES)
    image, built = debian12.build(rec, progress=shown, force=args.force)
    if built:
        shown.finish(f"built {image.name}")
    elif not args.json:
        print(
            f"{image.name} is cached (recipe {image.info.digest[:12]} unchanged)", file=sys.stderr
        )
    return _show(args, image)


def do_list(args: argparse.Namespace) -> int:
    from qumran.config.units import format_size
    from qumran.images.cache import ImageStore

    images = ImageStore().list()
    if args.json:
        output.print_json([i.to_dict() for i in images])
        return 0
    rows = [
        [i.name, format_size(_round_mib(i.size())), i.info.digest[:12], i.info.created,
         str(i.path)]
        for i in images
    ]  # fmt: skip
    sys.stdout.write(output.table(["Name", "Size", "Digest", "Created", "Path"], rows))
    return 0


def do_rm(args: argparse.Namespace) -> int:
    from qumran.images.cache import ImageStore

    store = ImageStore()
    if not args.force:
        users = _overlays_on(args, store.get(args.name).path)
        if users:
            raise InvalidState(
                f"image {args.name!r} is the backing file of volume(s) {', '.join(users)}: "
                "they would stop working; delete them first (`qumran vol-delete`), or "
                "remove it anyway with --force"
            )
    image = store.remove(args.name)
    if args.json:
        output.print_json(image.to_dict() | {"removed": True})
    else:
        print(f"image '{image.name}' removed ({image.path})")
    return 0


def _overlays_on(args: argparse.Namespace, folder: Path) -> list[str]:
    """The caller's volumes whose backing file is in ``folder`` (POOL/NAME), as qumrand
    lists them; none when qumrand is not running (then nothing can be checked)."""
    from qumran.client import Client
    from qumran.client.errors import DaemonNotRunning

    client = Client(args.socket)
    try:
        pools = client.pools()
    except DaemonNotRunning:
        return []
    inside = f"{folder}/"
    return [
        f"{pool['name']}/{vol['name']}"
        for pool in pools
        if pool["owner"] == os.geteuid() and pool["usable"]
        for vol in client.volumes(pool["name"])
        if (vol["backing"] or "").startswith(inside)
    ]


def do_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qumran.images import imports, progress

    shown = progress.for_stream(imports.PHASES)
    image = imports.import_image(args.name, Path(args.file), progress=shown, replace=args.force)
    shown.finish(f"imported {image.name}")
    return _show(args, image)


def do_demo(args: argparse.Namespace) -> int:
    from qumran.images.demo import build_demo

    image = build_demo(force=args.force)
    doc: dict[str, Any] = {
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "cmdline": image.cmdline,
        "ready_line": image.ready_line,
        "definition": str(image.definition),
    }
    if args.json:
        output.print_json(doc)
    else:
        pairs = [(k.replace("_", " ").capitalize(), str(v)) for k, v in doc.items()]
        sys.stdout.write(output.key_values(pairs))
        print(f"\nDefine it with:  qumran define {image.definition}")
    return 0


def _show(args: argparse.Namespace, image: Image) -> int:
    doc = image.to_dict()
    if args.json:
        output.print_json(doc)
        return 0
    pairs = [(k.replace("_", " ").capitalize(), str(v)) for k, v in doc.items() if v is not None]
    sys.stdout.write(output.key_values(pairs))
    return 0


def _size(text: str) -> int:
    from qumran.config.units import parse_size

    try:
        return parse_size(text, "M")
    except ValueError as exc:
        raise InvalidArgument(f"--disk-size: {exc}") from None


def _round_mib(n: int) -> int:
    """Sizes in the table to the MiB: exact bytes are in --json."""
    mib = 1 << 20
    return max((n + mib - 1) // mib * mib, mib) if n else 0


# The command's (arguments, handler): qumran.cli.commands imports this module only for it.
FUNCTIONS = {"image": (arguments, run)}

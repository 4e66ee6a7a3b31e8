"""`qumran pool-*` and `qumran vol-*`: storage pools and volumes, kept by qumrand.

Thin, as every command: parse, one client call, print (a table, or ``--json``). Sizes
are read as elsewhere in Qumran (``8G``, ``512M``; a bare number is MiB) and sent in
bytes. ``--owner`` (root) names another user's pool by user name or uid.
"""

from __future__ import annotations

import sys

from qumran.cli import output
from qumran.client import Client
from qumran.errors import InvalidArgument

TYPE_CHECKING = False  # typing and argparse stay out of the CLI's fast path (cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from qumran.client.schema import PoolInfo, VolumeInfo


def _client(args: argparse.Namespace) -> Client:
    return Client(args.socket)


def uid_of(text: str) -> int:
    """A user name or a uid (``--owner``)."""
    if text.isdigit():
        return int(text)
    import pwd

    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"no user named {text!r}") from None


def _owner(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--owner", metavar="USER", type=uid_of, help="root: another user's pool (name or uid)"
    )


def _pool_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="POOL", default="default", help="the pool (default: default)")
    _owner(p)


def _size(text: str, what: str) -> int:
    from qumran.config.units import parse_size

    try:
        return parse_size(text, "M")
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


# --- pools ---------------------------------------------------------------------------


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


def do_pool_list(args: argparse.Namespace) -> int:
    pools = _client(args).pools()
    if args.json:
        output.print_json(pools)
        return 0
    rows = [
        [p["name"], output.user_label(p["owner"]), "active" if p["usable"] else "unusable",
         _gib(p["capacity"]), _gib(p["available"]), str(p["volumes"]), p["path"]]
        for p in pools
    ]  # fmt: skip
    headers = ["Name", "Owner", "State", "Capacity", "Available", "Volumes", "Path"]
    sys.stdout.write(output.table(headers, rows))
    return 0


def _pool_define_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the pool's name")
    p.add_argument("dir", metavar="DIR", help="an absolute directory of yours")


def do_pool_define(args: argparse.Namespace) -> int:
    pool = _client(args).define_pool(args.name, args.dir)
    return _pool_done(args, pool, f"pool '{pool['name']}' defined at {pool['path']}")


def _pool_name_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the pool's name")
    _owner(p)


def do_pool_info(args: argparse.Namespace) -> int:
    pool = _client(args).pool(args.name, owner=args.owner)
    if args.json:
        output.print_json(pool)
        return 0
    sys.stdout.write(output.key_values(_pool_pairs(pool)))
    return 0


def do_pool_undefine(args: argparse.Namespace) -> int:
    _client(args).undefine_pool(args.name, owner=args.owner)
    if args.json:
        output.print_json({"name": args.name, "undefined": True})
    else:
        print(f"pool '{args.name}' undefined (its directory and files are left as they were)")
    return 0


def _pool_done(args: argparse.Namespace, pool: PoolInfo, message: str) -> int:
    if args.json:
        output.print_json(pool)
    else:
        print(message)
    return 0


def _pool_pairs(pool: PoolInfo) -> list[tuple[str, str]]:
    return [
        ("Name", pool["name"]),
        ("Owner", output.user_label(pool["owner"])),
        ("Path", pool["path"]),
        ("State", "active" if pool["usable"] else f"unusable: {pool['problem']}"),
        ("Capacity", _gib(pool["capacity"])),
        ("Available", _gib(pool["available"])),
        ("Allocation", _gib(pool["allocation"])),
        ("Volumes", str(pool["volumes"])),
    ]


# --- volumes -------------------------------------------------------------------------


def _vol_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool_name", metavar="POOL", nargs="?", help="the pool (default: default)")
    p.add_argument("--pool", metavar="POOL", help="the same, as the other vol-* commands take it")
    _owner(p)


def do_vol_list(args: argparse.Namespace) -> int:
    if args.pool_name and args.pool and args.pool_name != args.pool:
        raise InvalidArgument(f"two pools given ({args.pool_name!r} and --pool {args.pool!r})")
    pool = args.pool_name or args.pool or "default"
    vols = _client(args).volumes(pool, owner=args.owner)
    if args.json:
        output.print_json(vols)
        return 0
    rows = [
        [v["name"], v["format"], _gib(v["capacity"]), _gib(v["allocation"]),
         v["backing"] or "-", ", ".join(v["used_by"]) or "-"]
        for v in vols
    ]  # fmt: skip
    headers = ["Name", "Format", "Capacity", "Allocation", "Backing", "Used by"]
    sys.stdout.write(output.table(headers, rows))
    return 0


def _vol_create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the volume's name (its file name)")
    p.add_argument("size", metavar="SIZE", help="its virtual size, e.g. 8G")
    p.add_argument("--format", metavar="FORMAT", default="qcow2", help="qcow2 (default) or raw")
    p.add_argument(
        "--backing",
        metavar="IMAGE|VOL",
        help="a qcow2 overlay on a volume of the pool, an image (`qumran image list`) "
        "or an absolute path of yours",
    )
    _pool_option(p)


def do_vol_create(args: argparse.Namespace) -> int:
    vol = _client(args).create_volume(
        args.name, _size(args.size, "SIZE"), pool=args.pool, format=args.format,
        backing=args.backing, owner=args.owner,
    )  # fmt: skip
    return _vol_done(args, vol, f"volume '{vol['name']}' created in pool '{vol['pool']}'")


def _vol_clone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="the volume to copy")
    p.add_argument("new", metavar="NEW", help="the copy's name")
    _pool_option(p)


def do_vol_clone(args: argparse.Namespace) -> int:
    vol = _client(args).clone_volume(args.source, args.new, pool=args.pool, owner=args.owner)
    return _vol_done(args, vol, f"volume '{args.source}' cloned to '{vol['name']}'")


def _vol_resize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the volume")
    p.add_argument("size", metavar="SIZE", help="its new virtual size (volumes only grow)")
    _pool_option(p)


def do_vol_resize(args: argparse.Namespace) -> int:
    size = _size(args.size, "SIZE")
    vol = _client(args).resize_volume(args.name, size, pool=args.pool, owner=args.owner)
    return _vol_done(args, vol, f"volume '{vol['name']}' resized to {_gib(vol['capacity'])}")


def _vol_name_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the volume")
    _pool_option(p)


def do_vol_delete(args: argparse.Namespace) -> int:
    _client(args).delete_volume(args.name, pool=args.pool, owner=args.owner)
    if args.json:
        output.print_json({"name": args.name, "pool": args.pool, "deleted": True})
    else:
        print(f"volume '{args.name}' deleted from pool '{args.pool}'")
    return 0


def do_vol_info(args: argparse.Namespace) -> int:
    vol = _client(args).volume(args.name, args.pool, owner=args.owner)
    if args.json:
        output.print_json(vol)
        return 0
    sys.stdout.write(output.key_values(_vol_pairs(vol)))
    return 0


def _vol_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the new volume's name")
    p.add_argument("file", metavar="FILE", help="a qcow2 or raw disk image of yours")
    _pool_option(p)


def do_vol_import(args: argparse.Namespace) -> int:
    import os.path

    file = os.path.abspath(args.file)  # qumrand reads it; a relative path means nothing there
    vol = _client(args).import_volume(args.name, file, pool=args.pool, owner=args.owner)
    return _vol_done(args, vol, f"volume '{vol['name']}' imported from {file}")


def _vol_done(args: argparse.Namespace, vol: VolumeInfo, message: str) -> int:
    if args.json:
        output.print_json(vol)
    else:
        print(message)
    return 0


def _vol_pairs(vol: VolumeInfo) -> list[tuple[str, str]]:
    backing = vol["backing"]
    if backing and vol["backing_format"]:
        backing += f" ({vol['backing_format']})"
    return [
        ("Name", vol["name"]),
        ("Pool", vol["pool"]),
        ("Owner", output.user_label(vol["owner"])),
        ("Path", vol["path"]),
        ("Format", vol["format"]),
        ("Capacity", f"{_gib(vol['capacity'])} ({vol['capacity']} bytes)"),
        ("Allocation", _gib(vol["allocation"])),
        ("Backing", backing or "-"),
        ("Used by", ", ".join(vol["used_by"]) or "-"),
    ]


def _gib(n: int) -> str:
    """Sizes for people, like virsh's "8.00 GiB"; exact bytes are in --json."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.2f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return str(n)  # not reached


# Each command's (arguments, handler), by name; qumran.cli.commands has their help and
# imports this module only when one of them runs.
FUNCTIONS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "pool-list": (_nothing, do_pool_list),
    "pool-define": (_pool_define_args, do_pool_define),
    "pool-info": (_pool_name_args, do_pool_info),
    "pool-undefine": (_pool_name_args, do_pool_undefine),
    "vol-list": (_vol_list_args, do_vol_list),
    "vol-create": (_vol_create_args, do_vol_create),
    "vol-clone": (_vol_clone_args, do_vol_clone),
    "vol-resize": (_vol_resize_args, do_vol_resize),
    "vol-delete": (_vol_name_args, do_vol_delete),
    "vol-info": (_vol_name_args, do_vol_info),
    "vol-import": (_vol_import_args, do_vol_import),
}

"""Running a command as "root" in a user namespace, so a normal user can make root-owned files.

The unpacked Debian tree holds files of many owners; ``mke2fs -d`` records the owners it
sees. As root that is the truth. As a normal user the tree is unpacked and read inside a
user namespace where root is the user (``--map-root-user``: what it writes stays the user's
and is readable afterwards) and uids/gids 1..65536 are the user's range from
``/etc/subuid`` and ``/etc/subgid`` (set through the setuid ``newuidmap``/``newgidmap``).
Files of those owners can then only be removed from inside such a namespace, which is why
the unpack script removes its tree itself.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from qumran.images.errors import MissingTools

RANGE = 65536
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")


def helper() -> list[str]:
    """The argv prefix that runs a command as namespace root (empty when already root)."""
    uid = os.geteuid()
    if uid == 0:
        return []
    user = pwd.getpwuid(uid).pw_name
    outer_uid = subordinate_start(SUBUID, user, uid)
    outer_gid = subordinate_start(SUBGID, user, uid)
    return [
        "unshare", "--user", "--map-root-user",
        f"--map-users={outer_uid},1,{RANGE}", f"--map-groups={outer_gid},1,{RANGE}", "--",
    ]  # fmt: skip


def subordinate_start(path: Path, user: str, uid: int) -> int:
    """The first id of ``user``'s range of at least :data:`RANGE` ids in ``path``."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count >= RANGE:
            return start
    raise MissingTools(
        f"{path} gives {user} no range of {RANGE} ids, which a build as a normal user needs: "
        f"as root, run `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
        " (any free range)"
    )

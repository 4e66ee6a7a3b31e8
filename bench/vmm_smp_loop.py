"""Boot the demo kernel with several vCPUs again and again, to catch a rare guest crash
(the issue: one triple fault in 17 three-vCPU boots). Run it inside the KVM test host:

    python -m tests.kvmhost run --timeout 3000 --cwd "$PWD" -- \\
        "$PWD/.venv/bin/python" bench/vmm_smp_loop.py [--boots 30] [--vcpus 3]

Each boot: qumran-vmm until the demo's ready line, then ``poweroff -f``; the exit status
(0 powered off, 2 crashed) and the seconds to the ready line. A crash prints qumran-vmm's
stderr, which holds every vCPU's registers and last exits (crashdump.py), and the last
console lines. Ends with one line: boots, crashes, other failures.
"""

from __future__ import annotations

import argparse
import sys
import time

from vmm_virtio import QUMRAN_VMM, Guest, GuestStuck, find_demo


def boot(demo_kernel: str, initrd: str, cmdline: str, vcpus: int, ready: str) -> tuple[str, str]:
    argv = [QUMRAN_VMM, "--name", "smp", "--kernel", demo_kernel, "--initrd", initrd,
            "--cmdline", cmdline, "--vcpus", str(vcpus), "--memory", "256M"]  # fmt: skip
    guest = Guest(argv)  # stderr goes with the console (the crash dump among it)
    start = time.monotonic()
    try:
        guest.wait_for(ready, 300)
        took = time.monotonic() - start
        assert guest.proc.stdin is not None
        guest.proc.stdin.write(b"poweroff -f\n")
        guest.proc.stdin.flush()
        status = guest.proc.wait(120)
        return ("ok" if status == 0 else f"exit {status}"), f"ready in {took:.1f} s"
    except GuestStuck:
        status = guest.proc.poll()
        text = guest.out.decode(errors="replace")
        kind = "crash" if status == 2 else f"stuck (exit {status})"
        return kind, text[-6000:]
    finally:
        guest.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--boots", type=int, default=30)
    p.add_argument("--vcpus", type=int, default=3)
    args = p.parse_args()
    demo = find_demo()
    counts: dict[str, int] = {}
    for i in range(1, args.boots + 1):
        kind, detail = boot(str(demo.kernel), str(demo.initrd), demo.cmdline, args.vcpus,
                            demo.ready_line)  # fmt: skip
        counts[kind] = counts.get(kind, 0) + 1
        print(f"boot {i}: {kind}: {detail if kind == 'ok' else ''}", flush=True)
        if kind != "ok":
            print(detail, flush=True)
    print(f"{args.boots} boots with {args.vcpus} vCPUs: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

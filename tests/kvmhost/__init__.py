"""The KVM test host: a QEMU TCG guest with AMD SVM emulated, kvm-amd loaded, the host's
root shared read-only, that runs one host command and reports its output and status.

    python -m tests.kvmhost run [--timeout S] [--cwd DIR] [--memory MIB] [--share DIR] -- CMD...
    python -m tests.kvmhost build
    python -m tests.kvmhost tier [--lanes N] FILES... -- PYTEST ARGS   (the kvm tier: tier.py)
"""

from .image import build_image
from .runner import run_in_kvmhost

__all__ = ["build_image", "run_in_kvmhost"]

#!/usr/bin/env bash
# Installs what Qumran needs on Debian 12: system packages, a virtualenv with Qumran in it,
# and (with --test) what the tests need; puts the commands on PATH (symlinks in
# /usr/local/bin for root, ~/.local/bin for a user); where systemd runs, installs and
# enables qumrand's socket-activated units (contrib/systemd/: the system ones for root,
# the user ones for a user). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

packages=(python3 python3-venv qemu-system-x86 qemu-utils cpio busybox-static procps nodejs)
# Virtual networks (docs/networks.md): nftables for NAT, dnsmasq for DHCP and DNS.
packages+=(nftables dnsmasq-base iproute2)
# ssh for `qumran ssh`; ssh-keygen for the SSH host key qumrand makes for each guest.
packages+=(openssh-client)
# passt: user-mode networking without privileges for qumran-vmm (`type: user` NICs).
packages+=(passt)
# libseccomp's Python bindings: qumran-vmm's threads run under seccomp filters (confine.py).
packages+=(python3-seccomp)
# The web manager's front-end libraries come from npm; NodeSource's nodejs brings its own npm.
command -v npm >/dev/null || packages+=(npm)
if [ "$want_tests" = 1 ]; then
    # systemd: systemd-analyze and systemd-socket-activate, to check qumrand's units.
    packages+=(acpica-tools hyperfine passwd util-linux chromium systemd)
    # `qumran image build debian-12` (the integration tier builds it once, then caches it).
    packages+=(mmdebstrap e2fsprogs fdisk grub-pc-bin grub-common uidmap)
    # libvirt's own clients, run against qumrand's libvirt-sock (tests/unit/test_libvirt_*).
    packages+=(libvirt-clients python3-libvirt)
    # ... and the graphical ones on an X server of the test's own (Xvfb): virt-manager,
    # driven through its accessibility tree (python3-pyatspi, in a D-Bus session of its
    # own), and virt-viewer (tests/integration/test_libvirt_viewers.py).
    packages+=(virt-manager virt-viewer xvfb python3-pyatspi dbus-daemon at-spi2-core)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The system's Python, not a per-user one: VM processes (qumran-vmm) and test users run
# from this virtualenv as other uids, so its interpreter must be reachable by everyone.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
extras=""
[ "$want_tests" = 1 ] && extras="[test]"
# Installed for this pyproject.toml and these extras already: nothing to do (and a user
# using a clone someone else set up does not need to write to its .venv).
stamp="$(sha256sum pyproject.toml | cut -c1-16)${extras}"
if [ "$(cat .venv/.qumran-setup 2>/dev/null)" != "$stamp" ]; then
    if [ -w .venv ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
        echo "$stamp" > .venv/.qumran-setup
    else
        echo "setup: $PWD/.venv is $(stat -c %U .venv)'s, not yours: using it as it is"
    fi
fi

# The web manager's xterm.js, noVNC and uPlot, copied from npm into the package (no CDN).
web/build.sh --if-needed

scripts/install-commands.sh

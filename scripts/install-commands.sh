#!/usr/bin/env bash
# Part of scripts/setup.sh: puts qumran, qumrand and qumran-vmm on PATH, and qumrand's
# systemd units where systemd runs. Root: /usr/local/bin and the system units
# (/etc/systemd/system); a user: ~/.local/bin and the user units (~/.config/systemd/user).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    bindir=/usr/local/bin
    settings=/etc/qumran/qumrand.toml
else
    bindir="$HOME/.local/bin"
    settings="${XDG_CONFIG_HOME:-$HOME/.config}/qumran/qumrand.toml"
fi

# --- the commands ------------------------------------------------------------------
mkdir -p "$bindir"
for cmd in qumran qumrand qumran-vmm; do
    link="$bindir/$cmd"
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        echo "setup: $link is not a symlink of ours: left as it is"
        continue
    fi
    ln -sfn "$PWD/.venv/bin/$cmd" "$link"
done
echo "setup: qumran, qumrand and qumran-vmm are in $bindir (symlinks to $PWD/.venv/bin)"
case ":$PATH:" in
    *":$bindir:"*) ;;
    *) echo "setup: $bindir is not on your PATH yet: log in again (Debian's ~/.profile" \
            "adds it) or run: export PATH=\"$bindir:\$PATH\"" ;;
esac

# --- the settings file: an example, all commented out, if there is none -------------
if [ ! -e "$settings" ]; then
    mkdir -p "$(dirname "$settings")"
    cp contrib/qumrand.toml "$settings"
    echo "setup: qumrand's settings are in $settings (all defaults for now; docs/configuration.md)"
fi

# --- systemd units -----------------------------------------------------------------
if [ ! -d /run/systemd/system ]; then  # sd_booted(3): is systemd this machine's init?
    echo "setup: systemd is not running here: no units installed; start qumrand by hand" \
         "(./scripts/demo does), and manage it with \`qumran daemon status|stop|restart\`"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    unitdir=/etc/systemd/system
    systemctl=(systemctl)
    units=(contrib/systemd/qumrand.service contrib/systemd/qumrand.socket)
else
    if ! systemctl --user show-environment >/dev/null 2>&1; then
        echo "setup: this session has no systemd user manager (su -, ssh without a systemd" \
             "login): no user units installed; ./scripts/demo starts qumrand by hand"
        exit 0
    fi
    unitdir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    systemctl=(systemctl --user)
    units=(contrib/systemd/user/qumrand.service contrib/systemd/user/qumrand.socket)
fi
mkdir -p "$unitdir"
install -m 0644 "${units[@]}" "$unitdir/"
"${systemctl[@]}" daemon-reload
if "${systemctl[@]}" is-active --quiet qumrand.socket; then
    echo "setup: qumrand.socket is active (${systemctl[*]} status qumrand)"
elif .venv/bin/qumran host >/dev/null 2>&1; then
    # A qumrand started by hand holds the socket's path: systemd would take it away.
    echo "setup: units installed in $unitdir; a qumrand started by hand is running: to run it" \
         "under systemd, \`qumran daemon stop\`, then \`${systemctl[*]} enable --now qumrand.socket\`"
else
    "${systemctl[@]}" enable --now qumrand.socket
    echo "setup: qumrand runs under systemd (units in $unitdir): it starts at the first" \
         "connection; \`${systemctl[*]} status qumrand\`, \`${systemctl[*]} reload qumrand\` restarts it"
fi

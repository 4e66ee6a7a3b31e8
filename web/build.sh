#!/usr/bin/env bash
# Installs the web manager's front-end libraries from npm (exact versions from
# package-lock.json) and copies the files the pages load to src/qumran/web/static/vendor/
# (git-ignored). Nothing is fetched from a CDN at run time.
# With --if-needed it does nothing when the copied files match package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
vendor=../src/qumran/web/static/vendor
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "${1:-}" = "--if-needed" ] && [ "$(cat "$vendor/.lock-sha256" 2>/dev/null)" = "$lock_sum" ]; then
    exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
rm -rf "$vendor"
mkdir -p "$vendor/xterm" "$vendor/uplot" "$vendor/novnc"
cp node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css "$vendor/xterm/"
cp node_modules/@xterm/addon-fit/lib/addon-fit.js "$vendor/xterm/"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$vendor/uplot/"
# noVNC is ES modules that import each other by relative path: keep its tree.
cp -r node_modules/@novnc/novnc/core node_modules/@novnc/novnc/vendor "$vendor/novnc/"
for pkg in @xterm/xterm @xterm/addon-fit uplot @novnc/novnc; do
    cp node_modules/$pkg/LICENSE* "$vendor/$(basename "$pkg" | sed 's/addon-fit/xterm/')/" 2>/dev/null || true
done
echo "$lock_sum" > "$vendor/.lock-sha256"
echo "web assets in $(cd "$vendor" && pwd)"

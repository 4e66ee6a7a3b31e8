#!/usr/bin/env bash
# Installs the web manager's front-end libraries from npm (exact versions from
# package-lock.json) and copies the files the pages load to src/qumran/web/static/vendor/
# (git-ignored). Nothing is fetched from a CDN at run time.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
vendor=../src/qumran/web/static/vendor
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
echo "web assets in $(cd "$vendor" && pwd)"

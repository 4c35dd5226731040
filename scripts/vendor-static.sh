#!/usr/bin/env bash
# Copy the front-end libraries installed from npm (package-lock.json) into static/vendor/.
# static/vendor/ is generated, not committed; no CDN is used at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund --loglevel=error
out=static/vendor
rm -rf "$out"
mkdir -p "$out/htmx" "$out/bootstrap" "$out/uplot"
cp node_modules/htmx.org/dist/htmx.min.js "$out/htmx/"
cp node_modules/bootstrap/dist/css/bootstrap.min.css "$out/bootstrap/"
cp node_modules/bootstrap/dist/js/bootstrap.bundle.min.js "$out/bootstrap/"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$out/uplot/"
echo "vendored: $(ls "$out" | tr '\n' ' ')"

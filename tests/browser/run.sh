#!/usr/bin/env bash
# Runs the browser tests: type-checks the web client, then drives headless Chromium and Firefox
# against a real server. Needs Node 20+, Chromium at /usr/bin/chromium (or CHROMIUM_BIN),
# firefox-esr at /usr/bin/firefox-esr (or FIREFOX_BIN), root and iproute2 for the Firefox tests'
# network namespace, and a built server (STOA_BIN, default ../../target/release/stoa).
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -d node_modules/playwright-core || ! -d node_modules/puppeteer-core || ! -d node_modules/typescript ]]; then
  npm ci --no-audit --no-fund
fi
exec npm test

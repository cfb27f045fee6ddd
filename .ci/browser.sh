#!/usr/bin/env bash
# The sign-in page in a real browser: Debian's Chromium driven by
# playwright-core (tests/browser/signin.mjs) from the ignored test
# `browser_sign_in` in tests/admin.rs, which starts the fakes and the proxy
# in-process, runs the script, then logs in over IMAP with the new token.
# The screenshots land in target/browser/ (signin.png: after the sign-in).
set -euo pipefail
cd "$(dirname "$0")/.."

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
if ! command -v node >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
fi
"$CHROMIUM" --version 2>/dev/null || true
node --version

# Installs exactly what package-lock.json pins (no browser download: the
# package is playwright-core, which brings none).
(cd tests/browser && npm ci --no-audit --no-fund)

mkdir -p target/browser
rm -f target/browser/signin.png
cargo test --locked --test admin -- --ignored --exact browser_sign_in --nocapture
test -s target/browser/signin.png
echo "screenshot: target/browser/signin.png"

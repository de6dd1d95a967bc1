#!/usr/bin/env bash
# Prepares the browser test: Debian's Chromium (a browser download does not work here) and the
# test's npm packages. Idempotent: each step is skipped when its result is already there.
#
#   bash tests/browser/setup.sh && (cd tests/browser && npm test)
#
# Needs root for apt-get (as in CI); the test also needs the server: `cargo build` first.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  echo "setup.sh: installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

# npm ci when node_modules is missing or older than the lockfile.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup.sh: npm ci"
  npm ci --no-audit --no-fund
fi

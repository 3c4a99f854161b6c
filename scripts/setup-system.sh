#!/usr/bin/env bash
# The Debian packages the tests drive: Chromium for the Playwright browser tests (Playwright's own
# browser download cannot work without internet access: never call `playwright install`), and the
# PostgreSQL server binaries for the shared-database tests (each test run starts its own server on
# 127.0.0.1; nothing is configured system-wide). Installs only what is missing. Safe to run again.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: run 'sudo apt-get update && sudo apt-get install -y ${missing[*]}'" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian's packages (~1 min)" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null

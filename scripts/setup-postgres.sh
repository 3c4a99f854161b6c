#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the shared-database tests (tests/test_durability.py starts
# its own server on 127.0.0.1; nothing is configured system-wide).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL is missing: run 'sudo apt-get update && sudo apt-get install -y postgresql'" >&2
  exit 1
fi
echo "installing PostgreSQL from Debian's packages (~30 s)" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null

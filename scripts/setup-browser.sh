#!/usr/bin/env bash
# Debian's Chromium for the Playwright browser tests (tests/test_browser.py). Playwright's own
# browser download (`playwright install`) cannot work without internet access: never call it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing: run 'sudo apt-get update && sudo apt-get install -y chromium'" >&2
  exit 1
fi
echo "installing chromium from Debian's packages (~30 s)" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null

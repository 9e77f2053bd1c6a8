#!/usr/bin/env bash
# The browser the web-page tests drive: Debian's Chromium (Playwright's own browser download cannot
# work on machines that reach only package registries). Installed with apt when missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing Debian's chromium for the browser tests (apt-get)" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
}
command -v chromium >/dev/null

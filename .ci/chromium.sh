# shellcheck shell=bash
# Sourced by .ci/run: installs Debian's Chromium for tests/browser_test.ts when /usr/bin/chromium
# is missing (playwright-core drives it there; nothing is downloaded from a browser CDN). The
# browser test is skipped without Chromium unless CI=true, where it must run.
if [ ! -x /usr/bin/chromium ]; then
  _ci_sudo=""
  if [ "$(id -u)" -ne 0 ]; then _ci_sudo="sudo"; fi
  $_ci_sudo apt-get update
  $_ci_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  unset _ci_sudo
fi

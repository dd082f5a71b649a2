# shellcheck shell=bash
# Sourced by .ci/run: installs Debian's fuse3 and python3-fusepy for the test of a MEDIA_DIR on a
# volume without hard links (tests/media_volume_test.ts mounts tests/fixtures/no_links_fs.py).
# That test is skipped where FUSE cannot be used (no /dev/fuse); a failed install only skips it.
if [ -e /dev/fuse ] && ! /usr/bin/python3 -c "import fusepy" 2>/dev/null; then
  _ci_sudo=""
  if [ "$(id -u)" -ne 0 ]; then _ci_sudo="sudo"; fi
  $_ci_sudo apt-get update || true
  $_ci_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y fuse3 python3-fusepy || true
  unset _ci_sudo
fi

#!/usr/bin/env bash
# The test command: installs what it needs (./.venv, and Chromium for the browser tests), lints, then
# runs the whole test suite (unit, learning, notebook and browser tests) on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_venv.sh
# The browser tests drive Debian's Chromium (playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
ruff check helpers tests bench
python -m pytest "$@"

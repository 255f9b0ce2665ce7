#!/usr/bin/env bash
# The test command: installs what it needs into ./.venv, lints, then runs the whole test suite
# (unit, learning and notebook tests) on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_venv.sh
ruff check helpers tests bench
python -m pytest "$@"

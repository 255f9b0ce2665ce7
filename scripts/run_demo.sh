#!/usr/bin/env bash
# The main job: installs what it needs into ./.venv, then runs the whole notebook suite (00 to 07)
# in DEMO mode (generated dataset and GloVe file, no downloads, CPU-sized) with papermill.
# Executed notebooks land in runs/demo/notebooks/, artifacts in runs/demo/work/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/setup_venv.sh
python -m helpers.suite --demo --out runs/demo "$@"

#!/usr/bin/env bash
# Creates ./.venv (once) and installs requirements-test.txt and `helpers` itself (editable, so notebooks
# import it from any folder) into it; reinstalls only when the requirement files or pyproject.toml change.
# Sourced by run_tests.sh and run_demo.sh so both start from nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(cat "$root/requirements.txt" "$root/requirements-test.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$root/requirements-test.txt"
  # setuptools warns about editable installs in general; its output is shown only if the install fails
  if ! log="$("$venv/bin/python" -m pip install -q --no-deps -e "$root" 2>&1)"; then echo "$log" >&2; exit 1; fi
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

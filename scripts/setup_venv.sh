#!/usr/bin/env bash
# Create .venv with pip if it is missing and install requirements.txt. Idempotent: a second run
# only checks that everything is installed. Uses pip (not uv/poetry), which takes torch from the
# machine's local wheel store where one is configured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi

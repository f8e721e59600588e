#!/usr/bin/env bash
# Install bess-edge in ./.venv and run the daemon on the built-in simulated BMS (config/demo.toml):
# no hardware and no broker needed; data goes to ./bess-edge-demo.db. Ctrl-C stops it.
# In another terminal: .venv/bin/bess-edge status --config config/demo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import ensurepip" 2>/dev/null; then
  echo "installing python3-venv with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv
  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/bess-edge run --config config/demo.toml "$@"

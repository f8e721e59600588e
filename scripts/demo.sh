#!/usr/bin/env bash
# Install bess-edge in ./.venv and run the daemon on the built-in simulated BMS (config/demo.toml)
# together with the API and dashboard: no hardware and no broker needed; data goes to
# ./bess-edge-demo.db. Prints the dashboard URL and a demo operator key. Ctrl-C stops both.
# In another terminal: .venv/bin/bess-edge status --config config/demo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import ensurepip" 2>/dev/null; then
  echo "installing python3-venv with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv
  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[api]'
config=config/demo.toml
bin=.venv/bin/bess-edge

"$bin" run --config "$config" "$@" &
daemon=$!
api=""
stop() { kill "$daemon" ${api:+"$api"} 2>/dev/null || true; wait; }
trap stop EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 100); do [ -s bess-edge-demo.db ] && break; sleep 0.1; done

# A fresh operator key for this demo run (the previous one, if any, is revoked).
"$bin" api-key revoke demo --config "$config" >/dev/null 2>&1 || true
key=$("$bin" api-key create demo --role operator --config "$config" | tail -n 1)
"$bin" api --config "$config" &
api=$!
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')" \
    2>/dev/null && break
  sleep 0.2
done
cat <<MSG

  dashboard:  http://127.0.0.1:8080/        (API docs: http://127.0.0.1:8080/docs)
  demo key:   $key
              (operator; sign in with it, or: curl -H "Authorization: Bearer \$KEY" ...)

MSG
wait $daemon

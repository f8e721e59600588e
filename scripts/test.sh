#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command, and what CI runs.
# Works on a fresh Debian machine with no standard input; extra arguments go to pytest
# (e.g. scripts/test.sh -m slow for the soak tests, scripts/test.sh tests/test_store.py).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null || missing+=(socat)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)  # tests drop root's file access with it
# systemd-analyze checks the unit (verify, security score); only the tools, no init change.
command -v systemd-analyze >/dev/null || missing+=(systemd)
# The cloud ingest tests start their own PostgreSQL cluster (initdb in a temporary directory).
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || command -v pg_ctl >/dev/null \
  || missing+=(postgresql)
python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
# The dashboard's browser test drives Debian's own Chromium through its matching chromedriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" </dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The tests mostly wait (real brokers, daemons, PostgreSQL, a browser): four workers overlap the
# waits on two cores. A test file runs whole on one worker, so its module fixtures start once.
# BESS_EDGE_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -n "${BESS_EDGE_TEST_WORKERS:-4}" --dist loadfile "$@"

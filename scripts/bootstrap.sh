#!/usr/bin/env bash
# Installs what ClawQL Secrets needs on a fresh Debian machine: system packages
# (with apt-get, only when missing), the local database servers the example
# tenants and tests use (started when not listening), a virtualenv in .venv and
# the package with its pinned dependencies. Safe to run again: it does only
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# A real Prometheus scrapes the audit shipper in the tests.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
fresh_pg=0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then need+=(postgresql); fresh_pg=1; fi
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 5432; then
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  if [ "$fresh_pg" = 1 ]; then
    # A laptop we just installed PostgreSQL on: local TCP logins are trusted, as on
    # the project's CI machines (tests create and drop their own roles and databases).
    echo "host all all 127.0.0.1/32 trust" | $SUDO tee -a "/etc/postgresql/$ver/main/pg_hba.conf" >/dev/null
  fi
  echo "bootstrap: starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
fi
if ! listening 3306; then
  echo "bootstrap: starting MariaDB"
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 50); do listening 3306 && break; sleep 0.2; done
fi
if ! listening 6379; then
  echo "bootstrap: starting Redis"
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.clawql-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing clawql-secrets and its pinned dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

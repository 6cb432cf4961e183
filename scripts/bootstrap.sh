#!/usr/bin/env bash
# Installs what ClawQL Secrets needs on a fresh Debian machine: system packages
# (with apt-get, only when missing), the local database servers the example
# tenants and tests use (started when not listening), a virtualenv in .venv and
# the package with its pinned dependencies. Safe to run again: it does only
# what is missing. Works without systemd (containers, chroots): the servers are
# started directly. scripts/fresh-machine-check.sh runs it on an empty bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
PY="${PYTHON:-python3}"
need=()
# A venv whose ensurepip failed (python3-venv missing on an earlier run) has a
# python but no pip: it is made again.
make_venv=0; [ -x .venv/bin/python ] && [ -e .venv/bin/pip ] || make_venv=1
# Debian's python3 has no ensurepip (so no `python3 -m venv`) without python3-venv.
if [ "$make_venv" = 1 ] && { ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; }; then
  need+=(python3 python3-venv)
fi
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# A real Prometheus scrapes the audit shipper in the tests.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
fresh_pg=0 fresh_maria=0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then need+=(postgresql); fresh_pg=1; fi
if [ ! -x /usr/sbin/mariadbd ]; then need+=(mariadb-server); fresh_maria=1; fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {  # port name: up to 15 s, then fail loudly
  for _ in $(seq 75); do listening "$1" && return 0; sleep 0.2; done
  echo "bootstrap: $2 did not start listening on 127.0.0.1:$1" >&2
  return 1
}

ver=""; [ -d /etc/postgresql ] && ver=$(ls /etc/postgresql | sort -n | tail -1)
pg_hba_changed=0
if [ "$fresh_pg" = 1 ]; then
  # A laptop we just installed PostgreSQL on: local TCP logins are trusted, as on
  # the project's CI machines (tests create and drop their own roles and databases).
  # pg_hba.conf is first match wins, so the rule goes above Debian's scram-sha-256
  # ones. Done whether or not the package's own scripts already started the server.
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! $SUDO grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    $SUDO sed -i -e '1i host all all 127.0.0.1/32 trust  # added by clawql-secrets bootstrap' \
      -e '1i host all all ::1/128 trust  # added by clawql-secrets bootstrap' "$hba"
    pg_hba_changed=1
  fi
fi
if ! listening 5432; then
  echo "bootstrap: starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  wait_listening 5432 PostgreSQL
elif [ "$pg_hba_changed" = 1 ]; then
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
fi
if ! listening 3306; then
  echo "bootstrap: starting MariaDB"
  # Without systemd nothing makes the socket directory, and Debian's own config
  # leaves `user` to the unit file: mariadbd refuses to run as root without it.
  [ -d /run/mysqld ] || $SUDO install -d -o mysql -g mysql -m 0755 /run/mysqld
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_listening 3306 MariaDB
fi
if [ "$fresh_maria" = 1 ]; then
  # As on the CI machines: root logs in over 127.0.0.1 with an empty password
  # (the tests and `up` seed tenants as root over TCP). Debian's root@localhost
  # only takes the unix socket, which it keeps for the OS root.
  $SUDO mariadb -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
    CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;"
fi
if ! listening 6379; then
  echo "bootstrap: starting Redis"
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_listening 6379 Redis
fi

if [ "$make_venv" = 1 ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv --clear .venv
fi
stamp=.venv/.clawql-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing clawql-secrets and its pinned dependencies"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
# checkov (tests/cluster/test_manifests_checks.py) pins boto3 to a release the project
# cannot use, so it gets a virtualenv of its own: pyproject.toml's `checkov` group.
ck=.venv/checkov
if [ ! -x "$ck/bin/checkov" ] || [ pyproject.toml -nt "$ck/.installed" ]; then
  echo "bootstrap: installing checkov into $ck"
  .venv/bin/python -m venv --without-pip --clear "$ck"
  .venv/bin/python -m pip --python "$ck/bin/python" install -q --group checkov
  touch "$ck/.installed"
fi

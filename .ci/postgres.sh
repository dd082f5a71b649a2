# shellcheck shell=bash
# Starts a throwaway PostgreSQL server for the directory tests and exports TEST_POSTGRES_URL.
#
# Usage, from .ci/run (bash, as root on Debian; no stdin needed):
#
#   source .ci/postgres.sh            # installs Debian's postgresql if missing, starts a cluster
#   deno test --allow-all ...         # the tests read TEST_POSTGRES_URL
#
# Sourcing it again in the same shell reuses the running cluster. The cluster lives in a temp
# dir, listens on 127.0.0.1 only (a free port) with its unix socket in that dir, and is stopped
# and deleted when the shell exits: the script adds `ci_postgres_stop` in front of whatever EXIT
# trap the shell already had. A script that sets its own EXIT trap *after* sourcing must call
# `ci_postgres_stop` in it (or just call it when done; calling it twice is harmless).
#
# Exports: TEST_POSTGRES_URL=postgres://USER:PASS@127.0.0.1:PORT/DB (USER also owns a database
# named chat@db), CI_POSTGRES_DIR (the temp dir, with postgres.log in it) and CI_POSTGRES_PORT.
# Returns non-zero on failure, which stops a caller running under `set -e`. Works under
# `set -euo pipefail` and leaves shell options as they were.

# Finds the directory holding initdb and pg_ctl: PATH first, then Debian's versioned directory
# (Debian keeps them off PATH), newest version first.
_ci_postgres_bindir() {
  local initdb_path dir
  if initdb_path=$(command -v initdb 2>/dev/null) && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$initdb_path")"
    return 0
  fi
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Installs Debian's postgresql package; apt-get update is retried once for a flaky mirror. Its
# chatter goes to a log that is shown only when the install fails.
_ci_postgres_install() {
  local log status=0
  if [[ $(id -u) -ne 0 ]]; then
    echo "ci/postgres: initdb/pg_ctl not found and not root, cannot apt-get install postgresql" >&2
    return 1
  fi
  echo "ci/postgres: installing Debian's postgresql package" >&2
  log=$(mktemp "${TMPDIR:-/tmp}/ci-postgres-apt.XXXXXX.log") || return 1
  {
    apt-get update -q || { sleep 5 && apt-get update -q; }
  } >"$log" 2>&1 </dev/null || status=1
  if [[ $status -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
      >>"$log" 2>&1 </dev/null || status=1
  fi
  if [[ $status -ne 0 ]]; then
    echo "ci/postgres: installing postgresql failed; apt's output:" >&2
    cat "$log" >&2
  fi
  rm -f -- "$log"
  return "$status"
}

# Runs a command as the postgres user when root (the server refuses to run as root), from a
# directory that user can enter.
_ci_postgres_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd "$CI_POSTGRES_DIR" && runuser -u postgres -- "$@")
  else
    (cd "$CI_POSTGRES_DIR" && "$@")
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
_ci_postgres_port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Stops the cluster and deletes its temp dir; harmless when nothing runs.
ci_postgres_stop() {
  local dir=${CI_POSTGRES_DIR:-} bindir=${CI_POSTGRES_BINDIR:-}
  [[ -n "$dir" && -d "$dir" ]] || return 0
  if [[ -n "$bindir" && -f "$dir/data/postmaster.pid" ]]; then
    _ci_postgres_as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop \
      >/dev/null 2>&1 || true
  fi
  rm -rf -- "$dir"
  unset CI_POSTGRES_DIR CI_POSTGRES_PORT TEST_POSTGRES_URL
}

# Installs if needed, creates and starts the cluster, and exports the URL.
_ci_postgres_start() {
  local bindir data port password attempt started=0 user=chat_test db=chat_test

  # Sourced again: keep the cluster that is already running.
  if [[ -n "${CI_POSTGRES_DIR:-}" && -n "${TEST_POSTGRES_URL:-}" && -n "${CI_POSTGRES_BINDIR:-}" ]] &&
    "$CI_POSTGRES_BINDIR/pg_isready" -q -h 127.0.0.1 -p "${CI_POSTGRES_PORT:-0}" -t 5; then
    echo "ci/postgres: reusing the cluster on 127.0.0.1:$CI_POSTGRES_PORT" >&2
    return 0
  fi
  ci_postgres_stop

  bindir=$(_ci_postgres_bindir) || { _ci_postgres_install && bindir=$(_ci_postgres_bindir); } || {
    echo "ci/postgres: no initdb/pg_ctl even after installing postgresql" >&2
    return 1
  }
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    # Binaries without Debian's package (which creates the user): the server needs a non-root
    # owner all the same.
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
      return 1
  fi

  CI_POSTGRES_BINDIR=$bindir
  CI_POSTGRES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ci-postgres.XXXXXX") || return 1
  export CI_POSTGRES_BINDIR CI_POSTGRES_DIR
  # From here on, any way out of the shell removes the temp dir and stops the server.
  _ci_postgres_trap_exit
  if [[ $(id -u) -eq 0 ]] && ! chown postgres: "$CI_POSTGRES_DIR"; then
    ci_postgres_stop
    return 1
  fi
  data="$CI_POSTGRES_DIR/data"

  # Local socket connections trust the OS user (for the setup below); TCP needs the password,
  # as the tests' URL does.
  if ! _ci_postgres_as_owner "$bindir/initdb" -D "$data" -U postgres --encoding=UTF8 \
    --no-locale --auth-local=trust --auth-host=scram-sha-256 \
    >"$CI_POSTGRES_DIR/initdb.log" 2>&1; then
    echo "ci/postgres: initdb failed:" >&2
    cat "$CI_POSTGRES_DIR/initdb.log" >&2
    ci_postgres_stop
    return 1
  fi

  # A free port is only free until someone takes it, so a start that fails to bind tries another.
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if _ci_postgres_port_busy "$port"; then continue; fi
    # Durability settings are off: the cluster is thrown away after the run.
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = '$CI_POSTGRES_DIR'"
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
    } >"$data/postgresql.auto.conf"
    if _ci_postgres_as_owner "$bindir/pg_ctl" -D "$data" -l "$CI_POSTGRES_DIR/postgres.log" \
      -w -t 60 start >/dev/null 2>&1; then
      started=1
      break
    fi
    echo "ci/postgres: start on port $port failed (attempt $attempt)" >&2
  done
  if [[ $started -ne 1 ]]; then
    echo "ci/postgres: could not start the server; its log:" >&2
    cat "$CI_POSTGRES_DIR/postgres.log" >&2 || true
    ci_postgres_stop
    return 1
  fi
  CI_POSTGRES_PORT=$port
  export CI_POSTGRES_PORT

  for attempt in $(seq 1 60); do
    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; then break; fi
    if [[ $attempt -eq 60 ]]; then
      echo "ci/postgres: server not ready after 60 s" >&2
      ci_postgres_stop
      return 1
    fi
    sleep 1
  done

  password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  local psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$CI_POSTGRES_DIR" -p "$port" -U postgres
    -d postgres)
  if ! _ci_postgres_as_owner "${psql[@]}" -c "create role $user login password '$password'" \
    >/dev/null; then
    echo "ci/postgres: could not create the role" >&2
    ci_postgres_stop
    return 1
  fi
  # A linguistic default collation (ICU's root locale), as production databases have, so that
  # tests notice ordering that only holds under the C collation of a --no-locale cluster. A
  # server built without ICU gets a plain database.
  if ! _ci_postgres_as_owner "${psql[@]}" -c "create database $db owner $user template template0
      encoding 'UTF8' locale_provider icu icu_locale 'und'" >/dev/null 2>&1 &&
    ! _ci_postgres_as_owner "${psql[@]}" -c "create database $db owner $user" >/dev/null; then
    echo "ci/postgres: could not create the database" >&2
    ci_postgres_stop
    return 1
  fi

  # A database whose name holds an @, which a DATABASE_URL writes as %40 (directory_open_test.ts).
  if ! _ci_postgres_as_owner "${psql[@]}" -c "create database \"chat@db\" owner $user" >/dev/null; then
    echo "ci/postgres: could not create the database chat@db" >&2
    ci_postgres_stop
    return 1
  fi

  export TEST_POSTGRES_URL="postgres://$user:$password@127.0.0.1:$port/$db"
  echo "ci/postgres: PostgreSQL $("$bindir/pg_ctl" --version | sed 's/^pg_ctl (PostgreSQL) //') on 127.0.0.1:$port, data in $CI_POSTGRES_DIR" >&2
}

# Puts `ci_postgres_stop` in front of the EXIT trap the shell already has, once.
_ci_postgres_trap_exit() {
  local existing
  local -a words
  existing=$(trap -p EXIT)
  if [[ "$existing" == *ci_postgres_stop* ]]; then return 0; fi
  if [[ -z "$existing" ]]; then
    trap ci_postgres_stop EXIT
    return 0
  fi
  eval "words=($existing)" # trap -- 'commands' EXIT
  # shellcheck disable=SC2064 # the caller's commands are meant to be expanded now
  trap "ci_postgres_stop; ${words[2]}" EXIT
}

_ci_postgres_start

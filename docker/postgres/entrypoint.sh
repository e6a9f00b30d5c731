#!/bin/sh
# Entrypoint of xabridge-local/postgres: initialise the cluster on first
# start, then exec the server (it becomes PID 1, so `docker kill` is a crash
# of the postmaster).
#
#   POSTGRES_USER              superuser name (default postgres)
#   POSTGRES_PASSWORD          its password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_DB                database to create (default: POSTGRES_USER)
#   POSTGRES_HOST_AUTH_METHOD  auth for TCP clients (default scram-sha-256)
#
# The image's postgresql.conf listens on all interfaces and enables two-phase
# commit (max_prepared_transactions = max_connections = 300); `-c` arguments
# override it.
set -eu

if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	user=${POSTGRES_USER:-postgres}
	db=${POSTGRES_DB:-$user}
	auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	case "$db$user" in *[!A-Za-z0-9_]*)
		echo "xabridge-entrypoint: POSTGRES_USER and POSTGRES_DB may hold only [A-Za-z0-9_]" >&2
		exit 1 ;;
	esac
	if [ "$auth" != trust ] && [ -z "${POSTGRES_PASSWORD:-}" ]; then
		echo "xabridge-entrypoint: set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust for a throwaway server" >&2
		exit 1
	fi
	echo "xabridge-entrypoint: initialising $PGDATA"
	mkdir -p "$PGDATA"
	chmod 700 "$PGDATA"
	pwfile=$(mktemp)
	printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
	pwopt=
	[ -n "${POSTGRES_PASSWORD:-}" ] && pwopt="--pwfile=$pwfile"
	# shellcheck disable=SC2086
	initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host="$auth" $pwopt >/dev/null
	rm -f "$pwfile"
	cat >>"$PGDATA/pg_hba.conf" <<HBA
# xabridge-entrypoint: TCP clients from anywhere (the container's own networks)
host all all 0.0.0.0/0 $auth
host all all ::/0 $auth
HBA
	cat >>"$PGDATA/postgresql.conf" <<CONF
# xabridge-entrypoint
listen_addresses = '*'
unix_socket_directories = '/tmp'
max_connections = 300
max_prepared_transactions = 300
CONF
	if [ "$db" != postgres ]; then
		echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -D "$PGDATA" -c listen_addresses= postgres >/dev/null
	fi
	echo "xabridge-entrypoint: initialised (database $db, user $user, host auth $auth)"
fi

exec "$@"

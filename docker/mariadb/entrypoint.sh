#!/bin/sh
# Entrypoint of xabridge-local/mariadb: initialise the data directory on
# first start (with a temporary server on a unix socket only, no network),
# then exec the server (it becomes PID 1, so `docker kill` is a crash of
# mariadbd).
#
#   MARIADB_ROOT_PASSWORD / MYSQL_ROOT_PASSWORD                     root's password
#   MARIADB_ALLOW_EMPTY_ROOT_PASSWORD / MYSQL_ALLOW_EMPTY_PASSWORD  1: root without a password (throwaway servers)
#   MARIADB_DATABASE / MYSQL_DATABASE                               database to create
set -eu

if [ "${1#-}" != "$1" ]; then
	set -- mariadbd "$@"
fi

datadir=/var/lib/mysql
if [ "$1" = mariadbd ] && [ ! -d "$datadir/mysql" ]; then
	pw=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
	empty=${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}
	db=${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}
	if [ -z "$pw" ] && [ -z "$empty" ]; then
		echo "xabridge-entrypoint: set MARIADB_ROOT_PASSWORD, or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 for a throwaway server" >&2
		exit 1
	fi
	case "$db" in *[!A-Za-z0-9_]*)
		echo "xabridge-entrypoint: MARIADB_DATABASE may hold only [A-Za-z0-9_]" >&2
		exit 1 ;;
	esac
	echo "xabridge-entrypoint: initialising $datadir"
	mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \
		--skip-test-db --skip-name-resolve >/tmp/install.log 2>&1 || { cat /tmp/install.log >&2; exit 1; }
	sock=/tmp/init.sock
	mariadbd --datadir="$datadir" --skip-networking --socket="$sock" --pid-file=/tmp/init.pid >/tmp/init.log 2>&1 &
	init=$!
	i=0
	until mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 600 ] || ! kill -0 "$init" 2>/dev/null; then
			cat /tmp/init.log >&2
			echo "xabridge-entrypoint: the initialisation server did not start" >&2
			exit 1
		fi
		sleep 0.1
	done
	esc=$(printf '%s' "$pw" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")
	{
		echo "SET @@SESSION.SQL_LOG_BIN=0;"
		echo "CREATE USER 'root'@'%' IDENTIFIED BY '$esc';"
		echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
		echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$esc';"
		[ -n "$db" ] && echo "CREATE DATABASE IF NOT EXISTS \`$db\`;"
		echo "FLUSH PRIVILEGES;"
	} | mariadb --no-defaults --socket="$sock" -uroot
	kill -TERM "$init"
	wait "$init" || true
	rm -f /tmp/init.log /tmp/install.log
	echo "xabridge-entrypoint: initialised (database ${db:-none})"
fi

exec "$@"

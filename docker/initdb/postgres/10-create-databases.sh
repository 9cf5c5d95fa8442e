#!/bin/sh
# Creates the PostgreSQL databases of the example services (users, billing) the first time
# the stack starts on an empty volume; the postgres image runs every script of
# /docker-entrypoint-initdb.d then. Safe to run again: a database that exists is kept.
# Names: USERS_DB and BILLING_DB (docker/.env), as settings/settings.toml's [docker] reads them.
set -eu

for db in "${USERS_DB:-users}" "${BILLING_DB:-billing}"; do
  psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:?}" \
    --dbname "${POSTGRES_DB:-$POSTGRES_USER}" --set=db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
  echo "initdb: database $db is there"
done

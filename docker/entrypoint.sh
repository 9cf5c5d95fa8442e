#!/bin/sh
# ncm-migrate's container entrypoint.
#
#   entrypoint.sh               wait for every database, then migrate them all, and exit
#                               (the one-shot `migrate` service of docker-compose.yml)
#   entrypoint.sh COMMAND ...   any manage.py command: `showmigrations`, `migrate users 0002`
#
# It works outside Docker too: NCM_APP_DIR is the folder that holds manage.py (default /app),
# PYTHON the interpreter (default python), NCM_ENV the environment (default docker).
# Exit codes are manage.py's (4: a database stayed unreachable).
set -eu

app_dir="${NCM_APP_DIR:-/app}"
python="${PYTHON:-python}"
env_name="${NCM_ENV:-docker}"
# The environment of every command, unless it names another with --env.
NCM_ENV="$env_name"
export NCM_ENV
# NCM_* variables are settings to manage.py; this one is ours alone.
unset NCM_APP_DIR

if [ ! -f "$app_dir/manage.py" ]; then
  echo "entrypoint: no manage.py in $app_dir; set NCM_APP_DIR to the monorepo's folder." >&2
  exit 2
fi

# Runs a command in the background and hands it SIGTERM (for SIGTERM or SIGINT), so that
# stopping the container interrupts it at once even while this shell is PID 1, which
# ignores signals it has no handler for. Returns the command's exit status.
run_forwarding_signals() {
  "$@" &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || :' TERM INT
  status=0
  wait "$child" || status=$?
  # A trapped signal ends `wait` early: wait again for the command's own exit status.
  while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
  done
  trap - TERM INT
  return "$status"
}

if [ "$#" -eq 0 ]; then
  run_forwarding_signals "$python" "$app_dir/manage.py" wait --env "$env_name"
  exec "$python" "$app_dir/manage.py" migrate --env "$env_name"
fi
exec "$python" "$app_dir/manage.py" "$@"

#!/bin/sh
# The image's entrypoint (deploy/Dockerfile); it works from a checkout just the same.
#
#   entrypoint.sh web|worker|beat|events|flower   run deploy/Procfile's line for that role
#   entrypoint.sh migrate          migrate as the owner (OWNER_DATABASE_URL), then create or update
#                                  the application role that DATABASE_URL names (manage.py db_app_role)
#   entrypoint.sh wait-migrated    wait until the database has every migration of this image
#   entrypoint.sh check [ROLE]     health probe of a role (deploy/probe.py); without ROLE, the role
#                                  this container was started with
#   entrypoint.sh manage ARGS...   an operator command: manage.py ARGS (create_agent, ...)
#
# The process commands are read from the Procfile at every start, never restated here, so the
# image, `make run` and any other supervisor cannot drift apart.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
PROCFILE="$here/Procfile"
WAIT_MIGRATED_INTERVAL_S=5

usage() {
    roles=$(sed -n 's/^\([a-z][a-z0-9_-]*\):.*/\1/p' "$PROCFILE" | tr '\n' '|')
    echo "usage: $0 ${roles}migrate|wait-migrated|check [ROLE]|manage ARGS..." >&2
    exit 64
}

# url_part URL_VARIABLE username|password: one part of a database URL, percent-decoded. Read from
# the environment, so a password never shows in a command line.
url_part() {
    python -c 'import os, sys, urllib.parse as p
part = getattr(p.urlsplit(os.environ[sys.argv[1]]), sys.argv[2])
print(p.unquote(part or ""))' "$1" "$2"
}

role=${1:-}
[ $# -gt 0 ] && shift

case "$role" in
    migrate)
        : "${OWNER_DATABASE_URL:?OWNER_DATABASE_URL (the owner role, which runs migrations) is not set}"
        : "${DATABASE_URL:?DATABASE_URL (the application role the processes connect as) is not set}"
        app_role=$(url_part DATABASE_URL username)
        owner_role=$(url_part OWNER_DATABASE_URL username)
        DATABASE_URL=$OWNER_DATABASE_URL python manage.py migrate --noinput
        if [ -z "$app_role" ] || [ "$app_role" = "$owner_role" ]; then
            echo "entrypoint: DATABASE_URL connects as the owner ($owner_role); no application role to update." \
                "Give the processes a role of their own (docs/operations.md, the database roles)" >&2
            exit 0
        fi
        ORDINAUT_APP_DB_PASSWORD=$(url_part DATABASE_URL password)
        export ORDINAUT_APP_DB_PASSWORD
        if [ -n "$ORDINAUT_APP_DB_PASSWORD" ]; then
            DATABASE_URL=$OWNER_DATABASE_URL exec python manage.py db_app_role "$app_role" \
                --password-env ORDINAUT_APP_DB_PASSWORD
        fi
        DATABASE_URL=$OWNER_DATABASE_URL exec python manage.py db_app_role "$app_role"
        ;;
    wait-migrated)
        # `migrate --check` only reads django_migrations, which the application role may do.
        until python manage.py migrate --check >/dev/null 2>&1; do
            echo "entrypoint: waiting for migrations (the migrate job) to be applied" >&2
            sleep "$WAIT_MIGRATED_INTERVAL_S"
        done
        echo "entrypoint: the database has every migration of this image"
        ;;
    check)
        exec python "$here/probe.py" "$@"
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    "" | -h | --help)
        usage
        ;;
    *)
        case "$role" in
            *[!a-z0-9_-]*) usage ;;
        esac
        line=$(sed -n "s/^$role:[[:space:]]*//p" "$PROCFILE")
        [ -n "$line" ] || usage
        # The line is shell (${VAR:-default}, $(...)), as honcho runs it; exec so that signals reach
        # the process itself.
        eval "exec $line"
        ;;
esac

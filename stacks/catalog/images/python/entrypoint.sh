#!/bin/sh
# Stackport Python entry point. Settings:
#   STACKPORT_PROCESS        web (default: gunicorn on 8000) or worker (python3 -m MODULE)
#   STACKPORT_WSGI_APP       module:callable of the WSGI app in /srv/app (default app:application)
#   STACKPORT_WORKERS        gunicorn worker processes, 1-64 (default 2)
#   STACKPORT_WORKER_MODULE  module run in worker mode (default worker)
# Values are checked against strict patterns and passed as separate arguments, never
# through a shell; an invalid value stops the container with a message (value not echoed).
# While /srv/app is empty, the built-in sample app (or sample worker) runs instead.
# Dependencies built by Stackport live in /srv/app/.deps (put on PYTHONPATH and PATH). A
# Procfile line named like the process (web: or worker:) is the start command when present:
# it is the customer's own command, run by /bin/sh -c in the customer's own container
# (PORT=8000 is set for it).
set -eu

die() {
    printf 'stackport-python: %s\n' "$*" >&2
    exit 64
}

nl='
'
# matches PATTERN VALUE: VALUE is one line matching the extended regex PATTERN entirely.
matches() {
    case $2 in "" | *"$nl"*) return 1 ;; esac
    printf '%s\n' "$2" | grep -Eqx -- "$1"
}

[ -w /tmp ] || die "/tmp is not writable: run with a tmpfs on /tmp (read-only root)"

sample_dir=/usr/share/stackport/sample
app_dir=/srv/app
sample=no
if [ -z "$(ls -A /srv/app 2>/dev/null)" ]; then
    sample=yes
    app_dir=$sample_dir
fi

if [ -d /srv/app/.deps ]; then
    export PYTHONPATH="/srv/app/.deps${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="/srv/app/.deps/bin:$PATH"
fi

process=${STACKPORT_PROCESS:-web}
case $process in web | worker) ;; *) die "STACKPORT_PROCESS must be web or worker; refusing to start" ;; esac
if [ "$sample" = no ] && [ -f /srv/app/Procfile ]; then
    command=$(sed -n "s/^$process:[[:space:]]*//p" /srv/app/Procfile | head -n 1)
    if [ -n "$command" ]; then
        echo "stackport-python: starting the Procfile's $process command" >&2
        export PORT=8000
        cd /srv/app
        exec /bin/sh -c "$command"
    fi
fi
case $process in
web)
    wsgi=${STACKPORT_WSGI_APP:-app:application}
    matches '[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*' "$wsgi" \
        || die "STACKPORT_WSGI_APP must be module:callable (for example app:application or mysite.wsgi:application); refusing to start"
    workers=${STACKPORT_WORKERS:-2}
    matches '[1-9][0-9]?' "$workers" && [ "$workers" -le 64 ] \
        || die "STACKPORT_WORKERS must be a number from 1 to 64; refusing to start"
    if [ "$sample" = yes ]; then
        echo "stackport-python: /srv/app is empty, serving the built-in sample app" >&2
        wsgi=stackport_sample:application
    fi
    cd "$app_dir"
    exec python3 -m gunicorn --bind 0.0.0.0:8000 --workers "$workers" --chdir "$app_dir" \
        --access-logfile - --error-logfile - --worker-tmp-dir /tmp -- "$wsgi"
    ;;
worker)
    module=${STACKPORT_WORKER_MODULE:-worker}
    matches '[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*' "$module" \
        || die "STACKPORT_WORKER_MODULE must be a dotted module name (for example tasks.worker); refusing to start"
    if [ "$sample" = yes ]; then
        echo "stackport-python: /srv/app is empty, running the built-in sample worker" >&2
        module=stackport_sample_worker
    fi
    cd "$app_dir"
    exec python3 -m "$module"
    ;;
*)
    die "STACKPORT_PROCESS must be web or worker; refusing to start"
    ;;
esac

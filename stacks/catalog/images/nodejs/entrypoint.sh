#!/bin/sh
# Stackport Node.js entry point. Settings:
#   STACKPORT_NODE_ENTRY  the server script, relative to /srv/app (default server.js):
#                         letters, digits, '_', '-', '.', '@', '+' and '/', no "..",
#                         not starting with '/' or '-'
# The value is checked before use and passed as one argument, never through a shell; an
# invalid value stops the container with a message (the value itself is not echoed).
# While /srv/app is empty, the built-in sample server runs instead. A Procfile "web:" line is
# the start command when present: the customer's own command, run by /bin/sh -c in the
# customer's own container (PORT=3000), with node_modules/.bin on PATH.
set -eu

die() {
    printf 'stackport-nodejs: %s\n' "$*" >&2
    exit 64
}

nl='
'
entry=${STACKPORT_NODE_ENTRY:-server.js}
case $entry in
    "" | *"$nl"* | *..* | /* | -* | *[!A-Za-z0-9_./@+-]*)
        die "STACKPORT_NODE_ENTRY must be a relative path inside /srv/app without '..' (for example server.js or dist/main.js); refusing to start" ;;
esac
[ "${#entry}" -le 255 ] || die "STACKPORT_NODE_ENTRY is too long; refusing to start"

[ -w /tmp ] || die "/tmp is not writable: run with a tmpfs on /tmp (read-only root)"

if [ -z "$(ls -A /srv/app 2>/dev/null)" ]; then
    echo "stackport-nodejs: /srv/app is empty, serving the built-in sample app" >&2
    cd /usr/share/stackport/sample
    exec node /usr/share/stackport/sample/server.js
fi

if [ -f /srv/app/Procfile ]; then
    command=$(sed -n 's/^web:[[:space:]]*//p' /srv/app/Procfile | head -n 1)
    if [ -n "$command" ]; then
        echo "stackport-nodejs: starting the Procfile's web command" >&2
        export PATH="/srv/app/node_modules/.bin:$PATH"
        cd /srv/app
        exec /bin/sh -c "$command"
    fi
fi

[ -e "/srv/app/$entry" ] || die "/srv/app/$entry does not exist (set STACKPORT_NODE_ENTRY); refusing to start"
cd /srv/app
exec node "/srv/app/$entry"

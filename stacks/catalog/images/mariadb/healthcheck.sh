#!/bin/sh
# Healthy when the server accepts a TCP login on 127.0.0.1:3306 and answers a query, as the
# privilege-less healthcheck account whose random password the entry point keeps in the volume.
set -eu
out=$(mariadb --defaults-extra-file=/var/lib/mysql/.stackport-healthcheck.cnf --protocol=tcp \
    --host=127.0.0.1 --port=3306 --connect-timeout=2 --batch --skip-column-names \
    --execute='SELECT 1' 2>/dev/null) || exit 1
[ "$out" = 1 ]

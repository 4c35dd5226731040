#!/bin/bash
# Healthy when memcached answers "version" on 127.0.0.1:11211 (bash's /dev/tcp: no netcat).
set -eu
exec 3<>/dev/tcp/127.0.0.1/11211
printf 'version\r\n' >&3
IFS= read -r -t 2 line <&3
exec 3<&-
[[ $line == VERSION* ]]

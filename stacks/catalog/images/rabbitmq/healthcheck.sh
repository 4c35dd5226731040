#!/bin/sh
# Healthy when the RabbitMQ application on this container's node is running (booted, its
# listeners open): the check of `rabbitmq-diagnostics check_running`, asked by a bare Erlang
# node (hidden, loopback only, the same cookie in $HOME) instead of the Elixir CLI. That CLI
# takes 2-6 s to start at the half CPU of a medium size, more than the 3 s health-check
# timeout; this takes under 1 s and writes nothing to the broker's log.
exec erl -noinput -hidden -sname "health-$$" +S 1:1 +A 1 \
    -kernel inet_dist_use_interface '{127,0,0,1}' \
    -eval '
Node = list_to_atom(os:getenv("RABBITMQ_NODENAME", "rabbit@localhost")),
halt(case rpc:call(Node, rabbit, is_running, [], 2000) of true -> 0; _ -> 1 end).'

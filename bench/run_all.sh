#!/usr/bin/env bash
# Run the four benchmarks one after the other (each sets up and removes everything it
# needs; see bench/README.md). Extra arguments go to every script, e.g. --runs 5.
# Each script's last line is its ratio; they are repeated together at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_ENV=test
export DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/stackport_bench}
export CACHE_URL=${BENCH_CACHE_URL:-redis://127.0.0.1:6379/5}
export STACKPORT_STACK_PREFIX=bench
summary=()
for script in deploy upgrade edge; do
  echo "== bench/$script.py"
  out=$(mktemp)
  .venv/bin/python "bench/$script.py" "$@" | tee "$out"
  summary+=("$(tail -n 1 "$out")")
  rm -f "$out"
done
# The page benchmark needs no engine and takes no --runs.
echo "== bench/pages.py"
out=$(mktemp)
.venv/bin/python bench/pages.py | tee "$out"
summary+=("$(tail -n 1 "$out")")
rm -f "$out"
echo "== summary"
printf '%s\n' "${summary[@]}"

#!/usr/bin/env bash
# Run Molecule scenarios one after another and print how long each took.
#   scripts/run-scenarios.sh docker_engine [consul_kv ...]
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
declare -a summary
for scenario in "$@"; do
  echo "[molecule] scenario $scenario: start $(date +%H:%M:%S)"
  start=$SECONDS
  if molecule test -s "$scenario"; then result=passed; else result=FAILED; status=1; fi
  summary+=("$scenario: $result in $(( SECONDS - start )) s")
  echo "[molecule] scenario $scenario: $result in $(( SECONDS - start )) s"
  [ "$status" = 0 ] || break
done
printf '[molecule] %s\n' "${summary[@]}"
exit "$status"

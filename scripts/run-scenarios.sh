#!/usr/bin/env bash
# Run Molecule scenarios on one shared set of lab nodes, in the order given, and print
# how long each took.
#   scripts/run-scenarios.sh docker_engine consul_kv overlay_net private_registry
#
# The scenarios share their nodes (`shared_state: true` in .config/molecule/config.yml):
# the first run creates them through the `default` scenario, each scenario then runs
# its sequence on them (`--destroy never` keeps them for the next), and the nodes are
# destroyed at the end, pass or fail. Molecule itself would order several `-s` by the
# directory listing, so the order (site.yml's tier order) is kept here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

destroy_nodes() { molecule destroy -s default >/dev/null 2>&1 || true; }

# Start from fresh nodes even if an earlier run was interrupted.
destroy_nodes
[ "${KEEP_NODES:-0}" = 1 ] || trap destroy_nodes EXIT

# The whole-cluster scenario re-runs site.yml (every tier, every node) for idempotence
# and again in check mode; when it closes the run, the role scenarios before it only
# converge and verify (docker_engine dry-runs the bare nodes first): their own
# idempotence and check passes would repeat what the cluster's cover (`make test-roles`
# and a scenario run alone keep them). See .config/molecule/config.yml.
if [ "${!#}" = cluster ] && [ "$#" -gt 1 ]; then
  export WEATHER_ROLE_SEQUENCE="[syntax, create, prepare, converge, verify, destroy]"
  export WEATHER_ENGINE_SEQUENCE="[syntax, create, prepare, check, converge, verify, destroy]"
  echo "[molecule] the cluster scenario closes this run: role scenarios converge and verify; idempotence and check run once, over site.yml"
fi

status=0
total=$SECONDS
declare -a summary
for scenario in "$@"; do
  echo "[molecule] scenario $scenario: start $(date +%H:%M:%S)"
  start=$SECONDS
  log=.cache/molecule-$scenario.log junit=$PWD/.cache/junit-$scenario.xml
  rm -f "$junit"
  if PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --junitxml=$junit" molecule test -s "$scenario" --destroy never 2>&1 | tee "$log"; then result=passed; else result=FAILED; status=1; fi
  summary+=("$scenario: $result in $(( SECONDS - start )) s")
  echo "[molecule] scenario $scenario: $result in $(( SECONDS - start )) s"
  [ "$status" = 0 ] || break
done
summary+=("all: $(( SECONDS - total )) s")
# A CI log keeps only its last lines: repeat what failed (the verifier's failed tests,
# a playbook's failed tasks) where it will be read.
if [ "$status" != 0 ]; then
  echo "[molecule] what failed in $scenario (whole output: $log):"
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *│ *//' "$log" | grep -E -A1 '^(fatal|failed): \[' | grep -v -- '^--$' \
    | cut -c1-300 | tail -n 12 || true
  [ ! -f "$junit" ] || python3 scripts/failed-tests.py "$junit"
fi
printf '[molecule] %s\n' "${summary[@]}"
exit "$status"

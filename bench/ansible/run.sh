#!/usr/bin/env bash
# Ansible against an emulated arm64 node: Ansible's linear strategy against Mitogen's
# (ansible.cfg), the same tasks (tasks.yml) in one run, reported as a ratio.
#   make bench-ansible        (needs the lab images: make images)
set -euo pipefail
cd "$(dirname "$0")/../.."
export ANSIBLE_CONFIG=ansible.cfg
node=bench-arm64
tmp="$(mktemp -d)"
cleanup() {
  docker rm -f -v "$node" >/dev/null 2>&1 || true
  docker network disconnect bench-ansible weather-lab-mirror >/dev/null 2>&1 || true
  docker network rm bench-ansible >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
printf 'bench:\n  hosts:\n    %s: {ansible_connection: docker, ansible_user: root, ansible_python_interpreter: /usr/bin/python3}\n' "$node" > "$tmp/inventory.yml"
inv="$tmp/inventory.yml"

echo "[bench] starting $node (weather-lab/node-engine:trixie-arm64)"
ansible-playbook -i "$inv" lab/start-nodes.yml \
  -e "{\"lab_network\": \"bench-ansible\", \"lab_labels\": {\"owner\": \"bench\"},
       \"lab_nodes\": [{\"name\": \"$node\", \"image\": \"weather-lab/node-engine:trixie-arm64\"}]}" \
  >"$tmp/start.log" 2>&1 || { cat "$tmp/start.log"; exit 1; }

run() {  # strategy -> seconds
  local start=$SECONDS
  ANSIBLE_STRATEGY="$1" ANSIBLE_DEPRECATION_WARNINGS=false \
    ansible-playbook -i "$inv" bench/ansible/tasks.yml >"$tmp/run.log" 2>&1 || { cat "$tmp/run.log" >&2; exit 1; }
  echo $(( SECONDS - start ))
}
# Alternate, so that neither strategy always runs on a warmer node.
linear1=$(run linear); mitogen1=$(run mitogen_linear)
linear2=$(run linear); mitogen2=$(run mitogen_linear)
linear=$(( linear1 + linear2 )); mitogen=$(( mitogen1 + mitogen2 ))
tasks=$(grep -c '^- name:' bench/ansible/pass.yml)
echo "[bench] $tasks tasks (+ a loop of 3) x 2 passes + facts, on an emulated arm64 node, twice each:"
echo "[bench]   linear:          ${linear1} s, ${linear2} s"
echo "[bench]   mitogen_linear:  ${mitogen1} s, ${mitogen2} s"
awk -v l="$linear" -v m="$mitogen" 'BEGIN { printf "[bench]   ratio linear / mitogen: %.1f\n", l / m }'

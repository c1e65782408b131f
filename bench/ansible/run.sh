#!/usr/bin/env bash
# Ansible against an emulated arm64 node: Ansible's linear strategy against Mitogen's
# (ansible.cfg), the same tasks (tasks.yml) in one run, reported as a ratio.
#   make bench-ansible        (needs the lab images: make images)
set -euo pipefail
cd "$(dirname "$0")/../.."
export ANSIBLE_CONFIG=ansible.cfg
node=bench-arm64
inv="$(mktemp)"
trap 'docker rm -f -v "$node" >/dev/null 2>&1; docker network rm bench-ansible >/dev/null 2>&1 || true; rm -f "$inv"' EXIT
printf 'bench:\n  hosts:\n    %s: {ansible_connection: docker, ansible_user: root}\n' "$node" > "$inv"

echo "[bench] starting $node (weather-lab/node-engine:trixie-arm64)"
ansible-playbook -i localhost, -c local /dev/stdin >/dev/null <<YML
- hosts: localhost
  gather_facts: false
  vars:
    lab_network: bench-ansible
    lab_nodes: [{name: $node, image: "weather-lab/node-engine:trixie-arm64"}]
    lab_labels: {owner: bench}
  tasks:
    - ansible.builtin.include_tasks: $PWD/lab/tasks/start-nodes.yml
YML

run() {  # strategy -> seconds
  local start=$SECONDS
  ANSIBLE_STRATEGY="$1" ansible-playbook -i "$inv" bench/ansible/tasks.yml >/dev/null
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

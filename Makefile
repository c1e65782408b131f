# One entry point for developers, CI and users. Every target prepares what it needs
# (host packages, Docker daemon, arm64 emulation, virtualenv, lab images) on its own:
# on a fresh machine `make test` alone is enough.
#
#   make test        the whole suite (what CI runs: .ci/run calls exactly this)
#   make test-fast   lint + Python unit tests, no lab nodes (about a minute)
#   make lab         a lab cluster of containers converged by playbooks/site.yml
#   make lab-down    remove it
#   make help        everything else

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule scenarios in the order `make test` runs them: site.yml's tier order, on ONE
# shared set of lab nodes (scripts/run-scenarios.sh, .config/molecule/config.yml). Each
# role scenario converges its tier on the nodes the previous ones built; the
# whole-cluster scenario closes the run (site.yml on the manager and two Pis,
# idempotence and check mode over every tier, faults, a third Pi), so the role
# scenarios before it only converge and verify (their own passes: make test-roles).
ROLE_SCENARIOS ?= docker_engine consul_kv overlay_net private_registry
SCENARIOS ?= $(ROLE_SCENARIOS) cluster

.PHONY: help secrets setup host venv apps-venv lock images bench bench-ansible lint test test-fast test-roles test-apps test-apps-fast test-molecule molecule-% lab lab-down clean

help: ## List the targets
	@grep -E '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

host: ## Install host packages, start dockerd, register arm64 emulation (idempotent)
	@bash scripts/setup-host.sh

venv: $(VENV)/.stamp ## Create the virtualenv with the pinned tooling
$(VENV)/.stamp: requirements-dev.txt
	@echo "[venv] installing pinned tooling into $(VENV) (about 2 minutes the first time)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

APPS := weather_common weather_producer fake_owm weather_consumer
apps-venv: $(VENV)/.apps-stamp ## Install the apps (editable) with their test extras into the venv
$(VENV)/.apps-stamp: $(VENV)/.stamp $(foreach a,$(APPS),apps/$(a)/pyproject.toml)
	@echo "[venv] installing the apps and their test dependencies"
	@$(PY) -m pip install -q $(foreach a,$(APPS),-e 'apps/$(a)[test]')
	@touch $@

setup: host venv ## host + venv

# On purpose only (PyPI from this machine): review the diff and commit the lock alone.
lock: ## Re-resolve the images' third-party wheels on PyPI into apps/requirements.lock (hashes)
	@python3 apps/lock-wheelhouse.py

images: host ## Build the lab images and seed the lab mirror (cached by recipe; arm64 takes minutes the first time)
	@bash lab/build-images.sh all amd64 arm64
	@bash lab/mirror.sh

# The lab's secrets (fresh random values, git-ignored), under the vault_* names of
# production's vault file. Molecule's inventory links to the same file.
LAB_VAULT := inventory/lab/group_vars/all/30-vault.yml
# lab/make-secrets.py runs each time: it keeps an existing file and only appends a
# secret a newer version needs.
secrets: ## Generate the lab's secrets once (kept afterwards; new ones appended)
	@python3 lab/make-secrets.py $(LAB_VAULT)

lint: venv secrets ## yamllint + ansible-lint (production profile)
	@echo "[lint] yamllint"; yamllint --strict .
	@echo "[lint] ansible-lint (production profile)"; ansible-lint --profile production --offline

test-molecule: setup images secrets ## Every Molecule scenario in $(SCENARIOS) (part of make test)
	@bash scripts/run-scenarios.sh $(SCENARIOS)

test-roles: setup images secrets ## The role scenarios alone, each with its own idempotence and check passes
	@bash scripts/run-scenarios.sh $(ROLE_SCENARIOS)

molecule-%: setup images secrets ## One scenario, e.g. make molecule-docker_engine
	@bash scripts/run-scenarios.sh $*

lab: setup images secrets ## Start a lab cluster (1 amd64 manager + 2 arm64 Pis) and run site.yml on it
	@ansible-playbook -i inventory/lab lab/up.yml

lab-down: venv ## Remove the lab cluster
	@ansible-playbook -i inventory/lab lab/down.yml

test-apps: host apps-venv ## The apps' tests: unit, integration (real Consul), browser, images
	@cd apps && pytest -p no:cacheprovider

test-apps-fast: host apps-venv ## The apps' tests without the slow image builds
	@cd apps && pytest -p no:cacheprovider -m "not slow"

bench: host apps-venv images ## The benchmark table (bench/run.py -> docs/benchmarks.md; about 6 minutes)
	@$(PY) -m pip install -q -e 'apps/weather_common[bench]'
	@$(PY) bench/run.py

bench-ansible: setup images ## Ansible's linear strategy vs Mitogen on an emulated Pi (about 5 minutes)
	@bash bench/ansible/run.sh

test-fast: lint test-apps-fast ## The quick subset: lint + the apps' tests without image builds

test: setup lint images test-apps test-molecule ## The whole suite, as CI runs it

clean: ## Remove the virtualenv and leftover Molecule nodes (keeps cached images)
	-@docker ps -aq --filter label=owner=molecule | xargs -r docker rm -f -v >/dev/null
	rm -rf $(VENV)

# Mitogen for Ansible's linear strategy (https://mitogen.networkgenomics.com/), loaded
# from the Python environment (requirements-dev.txt pins it).
#
# Why: every Ansible task normally starts a fresh Python on the node and re-imports its
# module. On a Raspberry Pi, and far more on the lab's emulated arm64 nodes, that start
# dominates a run (~7 s per task under qemu here). Mitogen keeps one interpreter per
# node for the whole run and caches what it imported: the same playbooks, 4-5x faster
# on an emulated Pi (docs/testing.md). Same tasks, same modules, same results.
#
# Without Mitogen installed, Ansible's own linear strategy runs instead.
# Opt out for one run: ANSIBLE_STRATEGY=linear ansible-playbook ...
try:
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    from ansible.plugins.strategy.linear import StrategyModule  # noqa: F401
    from ansible.utils.display import Display

    Display().warning("Mitogen is not installed: using Ansible's linear strategy (slower on Pis)")

"""Fixtures: the scenario's two nodes as Testinfra hosts."""

import pytest

from helpers import MANAGER, WORKER, node


@pytest.fixture(scope="session")
def manager():
    return node(MANAGER)


@pytest.fixture(scope="session")
def worker():
    return node(WORKER)

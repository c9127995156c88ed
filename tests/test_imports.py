import importlib
import pkgutil

import pytest

import offline_rl
import rewards
import rollout

MODULES = sorted({m.name for pkg in (offline_rl, rewards, rollout)
                  for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")})


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_rewards_and_offline_rl_import_without_vllm():
    import sys

    for name in MODULES:
        importlib.import_module(name)
    assert "vllm" not in sys.modules  # vLLM is imported only inside rollout's engines, lazily

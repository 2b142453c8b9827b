"""Shared fixtures. Tests that read ../shared/data skip in a user's clone and fail under CI=true.

Every test session gets its own empty caches (Hugging Face, lm-eval, TinyThinker's), so what a
developer's machine has cached can never change a result. They are set here, when pytest imports
this file and before any test module imports ``datasets``, ``huggingface_hub`` or ``transformers``
(which read them at import time), and in ``os.environ``, so subprocesses get them too.
``HF_HUB_OFFLINE`` is left alone: some tests run a local Hub server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from hermetic import UNSET_ENV, cache_env

# session fixtures made once for the modules that read them: the lm-eval run (test_lm_eval, test_report) and
# the interrupted SFT run (test_sft, test_tracking); registered in pytest_configure (below)
FIXTURE_PLUGINS = ("lm_eval_run", "helpers_sft")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

CACHE_ROOT = Path(tempfile.mkdtemp(prefix="tinythinker-tests-cache-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each (and in their subprocesses), or oversubscribed threads crawl
    os.environ.setdefault("OMP_NUM_THREADS", "1")
for _name in UNSET_ENV + tuple(n for n in os.environ if n.startswith("TINYTHINKER_DATA_")):
    os.environ.pop(_name, None)
os.environ.update(cache_env(CACHE_ROOT))


# Modules that take longest (measured with --durations), scheduled first so that the two xdist workers
# finish together; modules that share session fixtures run in one worker (their group) to make them once.
SLOWEST_FIRST = (
    "test_learning", "test_recipe", "test_lm_eval", "test_reflect", "test_study", "test_sft", "test_hub_roundtrip",
    "test_dpo", "test_tracking", "test_cli_students", "test_sft_accelerate",
)
GROUPS = {"test_report": "test_lm_eval", "test_tracking": "test_sft"}  # they share session fixtures (pytest_plugins)


def module_group(nodeid: str) -> str:
    """The worker group of a test: its module's name, or the module it shares session fixtures with."""
    name = Path(nodeid.split("::")[0]).stem
    return GROUPS.get(name, name)


def pytest_configure(config):
    """The fixture plugins where tests run: in each xdist worker, or in a run without workers. The xdist
    controller runs none, so it does not import torch, transformers and datasets for them (3 s before the
    workers start)."""
    controller = getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER")
    if not controller:
        for name in FIXTURE_PLUGINS:
            config.pluginmanager.import_plugin(name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Slowest groups first, a group's modules together, and otherwise the collection order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    order = {}
    for item in items:
        order.setdefault(module_group(item.nodeid), len(order))
    modules = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], len(modules))
    items.sort(key=lambda item: (rank.get(module_group(item.nodeid), len(rank)), order[module_group(item.nodeid)],
                                 modules[item.nodeid.split("::")[0]]))


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist has no such hook
def pytest_xdist_make_scheduler(config, log):
    """Each group's tests in one worker, so that its module and session fixtures are made once.

    A scheduler of our own rather than ``--dist loadgroup``: that one renames node ids, which pytest 9.2
    no longer reads (every test then went to whichever worker was free, and the fixtures were made twice)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid)

    return ModuleGroupScheduling(config, log)


def _cached_locations() -> dict[str, str]:
    """Where the already-imported libraries will read and write (their module-level constants)."""
    found = {}
    if "datasets" in sys.modules:
        import datasets.config as dc

        found.update({"datasets.config.HF_DATASETS_CACHE": str(dc.HF_DATASETS_CACHE),
                      "datasets.config.HF_CACHE_HOME": str(dc.HF_CACHE_HOME)})
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hc

        found.update({"huggingface_hub.constants.HF_HOME": hc.HF_HOME, "huggingface_hub.constants.HF_HUB_CACHE": hc.HF_HUB_CACHE})
    return found


@pytest.fixture(scope="session", autouse=True)
def hermetic_caches():
    """Fails the session if a library was imported before this file set the caches (it would use the
    developer's); removes the session's caches at the end."""
    outside = {name: value for name, value in _cached_locations().items() if not Path(value).is_relative_to(CACHE_ROOT)}
    if outside:
        shutil.rmtree(CACHE_ROOT, ignore_errors=True)
        pytest.fail(f"imported before tests/conftest.py set the caches, so they point outside {CACHE_ROOT}: {outside}")
    yield CACHE_ROOT
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)


def _need_shared(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing (it sits beside the repo in CI and development checkouts)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real raw data sets, prompts and public teacher rationales."""
    return _need_shared(SHARED_DATA)


@pytest.fixture(scope="session")
def raw_dir(shared_data) -> Path:
    """../shared/data/raw with one folder per data set."""
    return _need_shared(shared_data / "raw")


# --- small generated worlds (tinythinker world): the data of build, CLI, hub and recipe tests -------

WORLD_QUESTIONS = 80  # the minimum: 10 entities x 8 relations
WORLD_DEFECTS = 0.2  # well above the default, so every rejection kind appears in every data set's train split


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """``world(dataset)``: the folder of a small world (raw/, teacher.jsonl, world.json), written once
    a session with seed 42, WORLD_QUESTIONS questions and WORLD_DEFECTS defective teacher samples.
    Read only: a test that changes files copies them first."""
    from tinythinker.data.world import write_world

    root = tmp_path_factory.mktemp("worlds")
    made: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in made:
            made[dataset] = write_world(dataset, root / dataset, questions=WORLD_QUESTIONS, defects=WORLD_DEFECTS)
        return made[dataset]

    return get


@pytest.fixture(scope="session")
def world_build(world, tmp_path_factory):
    """``world_build(dataset)``: the BuildResult of ``tinythinker build`` on ``world(dataset)`` (seed 42),
    built once a session. Read only."""
    from tinythinker.data.build import build_dataset

    root = tmp_path_factory.mktemp("world-builds")
    built: dict[str, object] = {}

    def get(dataset: str):
        if dataset not in built:
            folder = world(dataset)
            built[dataset] = build_dataset(dataset, folder / "raw", [folder / "teacher.jsonl"], root / dataset)
        return built[dataset]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tests
    share two cores with others, and oversubscribed threads crawl; the count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=("seq2seq", "causal"))
def trained(request, tmp_path_factory):
    """A tiny student of each kind overfitted on the toy stage records (cached per test session)."""
    from helpers_data import overfit_student

    return overfit_student(request.param, str(tmp_path_factory.getbasetemp()))

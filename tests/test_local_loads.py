"""`datasets.load_dataset(folder, config)` (the README's call) never returns stale rows, and tests run
with caches of their own.

``datasets`` caches a local folder under its basename, the config name and a hash of the card; the
parquet file names in the card carry a digest of their content (tinythinker.artifacts), so a folder
rebuilt in place, or another folder with the same basename, loads its own rows. These tests use the
real library and the session's real cache (tests/conftest.py), where other tests' folders called
``csqa`` or ``preferences`` are cached too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from tinythinker.data.build import build_dataset
from helpers_data import TOY_QUESTIONS, write_stage_data
from tinythinker.artifacts import card_data_files, split_file, split_path, staged_folder, write_split
from tinythinker.data.splits import load_stage_split
from tinythinker.data.preferences import PairSet, config_name, write_preference_config
from tinythinker.data.records import FEATURES, all_configs


def file_rows(folder: Path, config: str, split: str) -> list[dict]:
    """The rows of a split as the folder's own parquet file holds them (the truth to compare with)."""
    return pq.read_table(folder / card_data_files(folder)[config][split]).to_pylist()


def loaded_rows(folder: Path, config: str) -> dict[str, list[dict]]:
    return {split: ds.to_list() for split, ds in datasets.load_dataset(str(folder), config).items()}


def assert_loads_its_own_rows(folder: Path, config: str) -> dict[str, list[dict]]:
    loaded = loaded_rows(folder, config)
    assert list(loaded) == list(card_data_files(folder)[config])
    for split, rows in loaded.items():
        assert rows == file_rows(folder, config, split), f"{folder} {config} {split}: stale rows"
    return loaded


def toy_folder(folder: Path, n: int, *, overwrite: bool = False) -> Path:
    """A stage data set folder of the first ``n`` toy questions, written like a build: staged, then
    renamed over ``folder``."""
    with staged_folder(folder, overwrite=overwrite) as tmp:
        write_stage_data(tmp, TOY_QUESTIONS[:n], variants=["full"])
    return folder


def pair_set(stage: str, n: int, tag: str) -> PairSet:
    rows = [{"id": f"q{i}", "stage": stage, "prompt": f"prompt {i}", "chosen": f"{tag} good {i}",
             "rejected": f"{tag} bad {i}"} for i in range(n)]
    return PairSet(stage, rows, {"pairs": n})


INFO = {"student": "runs/x/best", "samples": 4, "sampling": {"do_sample": True, "temperature": 0.7, "top_k": 0}, "seed": 42,
        "data": "out/csqa", "config": "csqa-full"}


# --- data set folders -----------------------------------------------------------------------------

def test_stage_folder_rebuilt_in_place_loads_the_new_rows(tmp_path):
    folder = toy_folder(tmp_path / "csqa", 1)
    assert len(assert_loads_its_own_rows(folder, "toy-full")["test"]) == 1
    toy_folder(folder, 3, overwrite=True)
    assert len(assert_loads_its_own_rows(folder, "toy-full")["test"]) == 3
    assert len(load_stage_split(folder, "toy-full", "test")) == 3  # the engine's reader too


def test_stage_folders_with_the_same_basename_load_their_own_rows(tmp_path):
    first, second = toy_folder(tmp_path / "a" / "csqa", 3), toy_folder(tmp_path / "b" / "csqa", 2)
    assert [r["id"] for r in assert_loads_its_own_rows(first, "toy-full")["test"]] == ["q1", "q2", "q3"]
    assert [r["id"] for r in assert_loads_its_own_rows(second, "toy-full")["test"]] == ["q1", "q2"]
    assert [r["id"] for r in assert_loads_its_own_rows(first, "toy-full")["test"]] == ["q1", "q2", "q3"]


def test_built_folder_rebuilt_with_other_rows_of_the_same_counts_loads_them(world, tmp_path):
    """The builder's path (dataset_builders): a rebuild in place whose splits have the same sizes but
    other rows (another order of the analyses) must not be served from the first build's cache."""
    out = tmp_path / "csqa"
    raw, responses = world("csqa") / "raw", [world("csqa") / "teacher.jsonl"]
    first = build_dataset("csqa", raw, responses, out)
    before = {config: assert_loads_its_own_rows(out, config) for config in all_configs("csqa")}
    again = build_dataset("csqa", raw, responses, out, overwrite=True, reference_order=True)
    assert again.counts == first.counts
    after = {config: assert_loads_its_own_rows(out, config) for config in all_configs("csqa")}
    assert after["csqa-full"]["summarize"] != before["csqa-full"]["summarize"]
    assert datasets.load_dataset(str(out), "csqa-full", split="summarize").features == FEATURES


def test_same_rows_same_file_names_and_rewriting_a_split_replaces_its_file(tmp_path):
    rows = [{name: "" if name not in ("choices", "teacher_analyses") else [] for name in FEATURES} for _ in range(2)]
    one = write_split(tmp_path / "one", "c", "test", rows, FEATURES)
    two = write_split(tmp_path / "two", "c", "test", rows, FEATURES)
    assert one.relative_to(tmp_path / "one") == two.relative_to(tmp_path / "two")
    assert one.name.startswith("test-00000-of-00001-") and one.read_bytes() == two.read_bytes()
    three = write_split(tmp_path / "one", "c", "test", rows[:1], FEATURES)
    assert three != one and not one.exists() and split_path(tmp_path / "one", "c", "test") == three
    assert sorted(p.name for p in (tmp_path / "one" / "data" / "c").iterdir()) == [three.name]  # no temporary left


def test_folder_written_before_names_carried_a_digest_still_loads(tmp_path):
    """Folders from earlier versions name files ``<split>-00000-of-00001.parquet``: the card lists them,
    so they load as before, and a preference set keeps such an iteration when it adds one."""
    folder = tmp_path / "preferences"
    write_preference_config(folder, dataset="csqa", iteration=1, pair_sets=[pair_set("recall", 2, "old")], info=INFO)
    current = split_path(folder, "csqa-dpo-iter1", "recall")
    legacy = current.with_name("recall-00000-of-00001.parquet")
    current.rename(legacy)
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace(current.name, legacy.name))
    assert card_data_files(folder)["csqa-dpo-iter1"]["recall"] == "data/csqa-dpo-iter1/recall-00000-of-00001.parquet"
    assert len(load_stage_split(folder, "csqa-dpo-iter1", "recall")) == 2
    write_preference_config(folder, dataset="csqa", iteration=2, pair_sets=[pair_set("recall", 1, "new")], info=INFO)
    assert [r["chosen"] for r in assert_loads_its_own_rows(folder, "csqa-dpo-iter1")["recall"]] == ["old good 0", "old good 1"]
    assert [r["chosen"] for r in assert_loads_its_own_rows(folder, "csqa-dpo-iter2")["recall"]] == ["new good 0"]


# --- preference folders -----------------------------------------------------------------------------

def test_preference_folder_rewritten_in_place_loads_the_new_pairs(tmp_path):
    folder = tmp_path / "run" / "preferences"
    config = config_name("csqa", 1)
    write_preference_config(folder, dataset="csqa", iteration=1,
                            pair_sets=[pair_set("recall", 3, "first"), pair_set("analyze", 2, "first")], info=INFO)
    assert len(assert_loads_its_own_rows(folder, config)["recall"]) == 3
    # the same run again (e.g. after retraining the student): iteration 1 is replaced in place,
    # with the same configs and splits (the same card layout) but other pairs
    write_preference_config(folder, dataset="csqa", iteration=1,
                            pair_sets=[pair_set("recall", 7, "second"), pair_set("analyze", 2, "second")], info=INFO)
    loaded = assert_loads_its_own_rows(folder, config)
    assert len(loaded["recall"]) == 7 and loaded["analyze"][0]["chosen"] == "second good 0"


def test_preference_folders_of_two_runs_load_their_own_pairs(tmp_path):
    """Every run's preference folder is called ``preferences``."""
    config = config_name("csqa", 1)
    for run, n in (("a", 3), ("b", 5)):
        write_preference_config(tmp_path / run / "preferences", dataset="csqa", iteration=1,
                                pair_sets=[pair_set("recall", n, run)], info=INFO)
    for run, n in (("a", 3), ("b", 5), ("a", 3)):
        rows = assert_loads_its_own_rows(tmp_path / run / "preferences", config)["recall"]
        assert [r["chosen"] for r in rows] == [f"{run} good {i}" for i in range(n)]


# --- the caches tests run with ----------------------------------------------------------------------

def test_datasets_caches_under_the_sessions_own_folder(hermetic_caches, tmp_path):
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(hermetic_caches)
    folder = toy_folder(tmp_path / "csqa", 1)
    loaded = datasets.load_dataset(str(folder), "toy-full", split="test")
    assert loaded.cache_files and all(Path(f["filename"]).is_relative_to(hermetic_caches) for f in loaded.cache_files)


def test_subprocesses_get_the_sessions_caches(hermetic_caches):
    code = ("import json, datasets.config as d, huggingface_hub.constants as h, transformers.utils.hub as t, "
            "lm_eval.caching.cache as l, tinythinker.data.teacher.cache as c; "
            "print(json.dumps([str(d.HF_DATASETS_CACHE), str(d.HF_MODULES_CACHE), h.HF_HOME, h.HF_HUB_CACHE, "
            "h.HF_XET_CACHE, h.HF_TOKEN_PATH, t.HF_MODULES_CACHE, l.PATH, str(c.default_cache_dir())]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    for location in json.loads(done.stdout.strip().splitlines()[-1]):
        assert Path(location).is_relative_to(hermetic_caches), location


def test_split_file_names_carry_the_digest():
    assert split_file("csqa-full", "recall", "0123456789abcdef") == "data/csqa-full/recall-00000-of-00001-0123456789abcdef.parquet"

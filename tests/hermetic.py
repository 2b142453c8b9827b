"""The cache locations tests run with (tests/conftest.py sets them for the whole session; a test that
starts a subprocess with a cache of its own uses :func:`cache_env` for it)."""

from __future__ import annotations

from pathlib import Path


def cache_env(root: str | Path) -> dict[str, str]:
    """Every cache location the libraries we use read from the environment, under ``root``."""
    root = Path(root)
    return {
        "HF_HOME": str(root / "hf"),  # huggingface_hub, datasets, transformers (and the saved token)
        "HF_HUB_CACHE": str(root / "hf" / "hub"),
        "HF_ASSETS_CACHE": str(root / "hf" / "assets"),
        "HF_XET_CACHE": str(root / "hf" / "xet"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),  # lm-eval's data sets are cached here too
        "HF_MODULES_CACHE": str(root / "hf" / "modules"),
        "HF_DATASETS_DOWNLOADED_DATASETS_PATH": str(root / "hf" / "datasets" / "downloads"),
        "HF_DATASETS_EXTRACTED_DATASETS_PATH": str(root / "hf" / "datasets" / "downloads" / "extracted"),
        "LM_HARNESS_CACHE_PATH": str(root / "lm-eval"),  # lm-eval's --cache_requests pickles
        "TINYTHINKER_CACHE": str(root / "tinythinker"),  # demo data sets built for evaluation
        "TINYTHINKER_CACHE_DIR": str(root / "tinythinker" / "teacher"),  # teacher responses
    }


# legacy names that would win over (or beside) the ones above, and settings that change which data a test reads
UNSET_ENV = ("HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE",
             "PYTORCH_PRETRAINED_BERT_CACHE", "TINYTHINKER_DATA")

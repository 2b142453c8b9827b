"""Hugging Face `datasets` builders, one per data set, turning teacher rationales into stage configs.

``BUILDERS[name]`` is the builder class of a data set; :func:`tinythinker.data.build.build_dataset`
runs them for every variant and writes a folder laid out like a Hub dataset repo.
"""

from tinythinker.data.builder import BUILDERS, StageConfig, TinyThinkerBuilder

from .csqa import CsqaBuilder
from .obqa import ObqaBuilder
from .strategyqa import StrategyqaBuilder

__all__ = ["BUILDERS", "CsqaBuilder", "ObqaBuilder", "StageConfig", "StrategyqaBuilder", "TinyThinkerBuilder"]

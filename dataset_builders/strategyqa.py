"""`datasets` builder for the TinyThinker stage records of StrategyQA (yes / no)."""

from tinythinker.data.builder import StrategyqaBuilder

__all__ = ["StrategyqaBuilder"]

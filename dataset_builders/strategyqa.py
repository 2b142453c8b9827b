"""`datasets` builder for the TinyThinker stage records of StrategyQA (yes / no)."""

from .base import TinyThinkerBuilder


class StrategyqaBuilder(TinyThinkerBuilder):
    DATASET = "strategyqa"

"""`datasets` builder for the TinyThinker stage records of StrategyQA (yes / no)."""

from tinythinker.data.builder import builder_class

StrategyqaBuilder = builder_class("strategyqa")

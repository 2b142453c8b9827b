"""`datasets` builder for the TinyThinker stage records of OpenBookQA (4 options)."""

from .base import TinyThinkerBuilder


class ObqaBuilder(TinyThinkerBuilder):
    DATASET = "obqa"

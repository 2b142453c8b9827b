"""`datasets` builder for the TinyThinker stage records of CommonsenseQA (5 options)."""

from .base import TinyThinkerBuilder


class CsqaBuilder(TinyThinkerBuilder):
    DATASET = "csqa"

"""`datasets` builder for the TinyThinker stage records of OpenBookQA (4 options)."""

from tinythinker.data.builder import ObqaBuilder

__all__ = ["ObqaBuilder"]

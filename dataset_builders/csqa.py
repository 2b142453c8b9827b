"""`datasets` builder for the TinyThinker stage records of CommonsenseQA (5 options)."""

from tinythinker.data.builder import CsqaBuilder

__all__ = ["CsqaBuilder"]

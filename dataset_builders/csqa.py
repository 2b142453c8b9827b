"""`datasets` builder for the TinyThinker stage records of CommonsenseQA (5 options)."""

from tinythinker.data.builder import builder_class

CsqaBuilder = builder_class("csqa")

"""Hugging Face `datasets` builders, one per data set, turning teacher rationales into stage configs."""

"""TinyThinker: coarse-to-fine reasoning distillation (Recall -> Analyze -> Summarize) as software."""

__version__ = "0.1.0"

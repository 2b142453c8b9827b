"""Evaluation: the three-stage inference engine, metrics, lm-eval tasks, model and driver, and reports."""

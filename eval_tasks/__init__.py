"""lm-eval tasks: `lm_eval --include_path eval_tasks --tasks tinythinker_csqa ...`."""

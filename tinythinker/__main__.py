"""`python -m tinythinker ...` (what `accelerate launch -m tinythinker ...` runs)."""

from .cli import main

main(prog_name="tinythinker")

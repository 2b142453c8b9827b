"""`python -m tinythinker ...` (what `accelerate launch -m tinythinker ...` runs)."""

from tinythinker.cli import main

main(prog_name="tinythinker")

"""Command-line subcommands, one module per area (registered lazily in tinythinker.cli)."""

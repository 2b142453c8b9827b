"""`tinythinker` command line: one click group whose subcommands load lazily (torch is slow to import).

Each subcommand lives in ``tinythinker/commands/<module>.py``. A :class:`TinyThinkerError` ends the
command with its one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from tinythinker.errors import TinyThinkerError

# command name -> "module:attribute" under tinythinker.commands
COMMANDS = {
    "world": "data:world",
    "build": "data:build",
    "inspect": "data:inspect",
    "push": "data:push",
    "teach": "teach:teach",
    "student": "students:student",
    "train": "train:train",
    "infer": "students:infer",
    "reflect": "reflect:reflect",
    "eval": "evaluate:eval_command",
    "report": "evaluate:report",
    "quickstart": "recipe:quickstart",
    "run": "recipe:run",
    "study": "study:study",
}


def _module_exists(module_name: str) -> bool:
    return importlib.util.find_spec(f"tinythinker.commands.{module_name}") is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        # Only commands whose module is installed (keeps --help working in a partial checkout).
        return sorted(name for name, target in COMMANDS.items() if _module_exists(target.split(":")[0]))

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _module_exists(target.split(":")[0]):
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"tinythinker.commands.{module_name}")
        return getattr(module, attribute)

    def invoke(self, ctx):
        from tinythinker.artifacts import watch_interrupts

        watch_interrupts()
        try:
            return super().invoke(ctx)
        except TinyThinkerError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # the long commands that keep finished work say so themselves (train, reflect, ...)
            click.echo("Interrupted; nothing half-written was kept. Rerun the same command to continue "
                       "(what was finished is kept) or to start it again.", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinythinker")
def main():
    """TinyThinker: coarse-to-fine reasoning distillation (Recall -> Analyze -> Summarize)."""


if __name__ == "__main__":
    main()

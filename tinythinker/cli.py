"""`tinythinker` command line: one click group whose subcommands load lazily (torch is slow to import).

Each subcommand lives in ``tinythinker/commands/<module>.py``. A :class:`TinyThinkerError` ends the
command with its one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
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
        return one_writer(getattr(module, attribute))

    def invoke(self, ctx):
        from tinythinker.artifacts import ignore_interrupts, watch_interrupts

        watch_interrupts()
        try:
            return super().invoke(ctx)
        except TinyThinkerError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except PermissionError as error:  # a read-only folder met after the output lock (which says so itself)
            where = f" {error.filename}" if error.filename else ""
            click.echo(f"Error: cannot write{where}: {error.strerror or error}; choose an output folder you can write, "
                       "or change the permissions", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # the long commands that keep finished work say so themselves (train, reflect, ...)
            ignore_interrupts()
            click.echo("Interrupted; nothing half-written was kept. Rerun the same command to continue "
                       "(what was finished is kept) or to start it again.", err=True)
            sys.exit(130)


OUTPUT_PARAMS = ("out", "run_dir")  # the parameter names of every command's output (--out)


def one_writer(command: click.Command) -> click.Command:
    """``command`` (and a group's subcommands) holding :func:`~tinythinker.artifacts.output_lock` on its
    output while it runs, so two processes never write one --out. Under accelerate only the main
    process locks (every process of one run writes the same folder, coordinated by the run itself)."""
    if getattr(command, "_one_writer", False):
        return command
    command._one_writer = True
    for sub in getattr(command, "commands", {}).values():
        one_writer(sub)
    callback = command.callback
    if callback is None or not any(p.name in OUTPUT_PARAMS for p in command.params):
        return command

    @functools.wraps(callback)
    def locked(*args, **kwargs):
        from tinythinker.artifacts import output_lock

        out = next((kwargs[name] for name in OUTPUT_PARAMS if kwargs.get(name) is not None), None)
        if out is None or os.environ.get("RANK", "0") != "0":
            return callback(*args, **kwargs)
        with output_lock(out):
            return callback(*args, **kwargs)

    command.callback = locked
    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinythinker")
def main():
    """TinyThinker: coarse-to-fine reasoning distillation (Recall -> Analyze -> Summarize)."""


if __name__ == "__main__":
    main()

"""Options that mean the same in every command, and the old spellings kept for one release.

The vocabulary: ``--out`` names what a command writes (folder or file); ``--batch-size`` is the
optimizer batch (records or pairs per step); ``--gen-batch-size`` the generation batch (sequences
per ``generate`` call); ``--json`` prints the result as JSON on stdout; ``--no-progress`` hides the
progress bar of a long command.
"""

from __future__ import annotations

import functools
import math

import click
from click.core import ParameterSource

_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)

class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (a nan passes every comparison with a bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


progress = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")


def gen_batch_size(param: str = "gen_batch_size", *, default: int | None = None,
                   help: str = "Sequences per generation batch (default: as many as fit a memory budget)."):
    """``--gen-batch-size`` (at least 1; None: the engine sizes batches by memory), stored as ``param`` (train and
    reflect keep their ``eval_batch_size``)."""
    return click.option("--gen-batch-size", param, type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help=help)


def warn_deprecated(old: str, instead: str) -> None:
    """The one line on stderr that an old spelling prints."""
    click.echo(f"Warning: {old} is deprecated and goes in the next release; {instead}", err=True)


def deprecated(old: str, use: str | None = None, *, param: str | None = None, reason: str = "", **option):
    """Keep the old spelling ``old`` of an option working for one release: hidden from --help, it warns
    on stderr in one line and hands its value to ``param``, the parameter of its new spelling ``use``
    (with neither, the option does nothing any more and ``reason`` says why). ``option``: its click
    settings (type, is_flag, ...). Put it right under ``@click.command``: it wraps the callback."""
    dest = "deprecated_" + old.lstrip("-").replace("-", "_")

    def decorate(callback):
        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(dest)
            context = click.get_current_context()
            if context.get_parameter_source(dest) in _GIVEN:
                warn_deprecated(old, f"use {use}" if use else reason)
                if param is not None:
                    if context.get_parameter_source(param) in _GIVEN:
                        raise click.UsageError(f"{old} and {use} are the same option; give {use} only", context)
                    kwargs[param] = value
            return callback(*args, **kwargs)

        return click.option(old, dest, hidden=True, **option)(wrapper)

    return decorate

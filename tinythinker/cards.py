"""Render card templates from the top-level ``cards/`` folder (Jinja2, markdown bodies).

Every artifact gets a card that records how it was made; templates live in ``cards/<name>.md.j2``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files("cards").joinpath(name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,  # a missing field is a bug, not an empty string in a published card
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_card(template: str, **context) -> str:
    """Render ``cards/<template>`` (e.g. ``"dataset.md.j2"``) with ``context``."""
    return _environment().get_template(template).render(**context)

"""Text helpers the checkpoint converters share (ADM / improved-diffusion in
``adm*.py``, CompVis LDM in ``ldm*.py``): key order for messages, the listing
of offending keys, and comma-separated lists from the command line."""

from __future__ import annotations

import re
from typing import Any

#: Keys listed per category in an error message.
SHOWN_KEYS = 8


def natural_key(key: str) -> list[Any]:
    """Sort key: ``input_blocks.2`` before ``input_blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def key_listing(title: str, items: list[str]) -> str:
    """``  <n> <title>:`` then the first :data:`SHOWN_KEYS` items, one per line."""
    shown = items[:SHOWN_KEYS]
    more = f"\n    ... and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    return f"  {len(items)} {title}:\n" + "\n".join(f"    {item}" for item in shown) + more


def comma_tuple(value: Any) -> Any:
    """A list given as ``"1,2,3,5"`` (the original scripts' flags, the CLI, JSON) or one int, as a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, int):
        return (value,)
    return value


def mismatch_listings(unexpected: list[str], missing: list[str], wrong: list[str]) -> list[str]:
    """The paragraphs of a checkpoint/architecture mismatch: each non-empty category listed."""
    parts = []
    if unexpected:
        parts.append(key_listing("unexpected key(s) (in the checkpoint, not in this architecture)", unexpected))
    if missing:
        parts.append(key_listing("missing key(s) (needed by this architecture, absent from the checkpoint)", missing))
    if wrong:
        parts.append(key_listing("shape mismatch(es)", wrong))
    return parts

"""The schema's foundation: the error every parameter check raises, the
strict base model and ``parse`` (errors name the parameter)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import click

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class InvalidParametersError(click.ClickException, ValueError):
    """Raised when a parameter block does not validate; names the parameters.
    A ``ClickException``, so `kedro run` prints the message, not a traceback."""


class StrictParams(BaseModel):
    """A parameter block: an unknown key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


#: A class label: an embedding index, or ``unconditional`` (the null label: core/models/class_labels.py).
ClassLabel = Annotated[int, Field(ge=0)] | Literal["unconditional"]


P = TypeVar("P", bound=BaseModel)


def parse(model: type[P], data: Any, where: str) -> P:
    """Validate ``data`` as ``model``; errors name ``where.<field>``."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data or {})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            name = f"{where}.{loc}" if loc else where
            lines.append(f"  {name}: {e['msg']} (got {e.get('input')!r})")
        raise InvalidParametersError(f"Invalid parameters in '{where}':\n" + "\n".join(lines)) from None

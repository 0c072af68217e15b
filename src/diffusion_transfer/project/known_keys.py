"""Every parameter key is known: a key the schema does not have would be
ignored, and the run would go on with a default the user never chose.

:func:`unknown_key_problems` walks the parameter tree as conf gives it
against the schema's own models (``schema.py`` and the blocks it
re-exports): each unknown key, at any level, becomes one line naming the
file that sets it, its key path and the closest known key; a key of an
older layout names its new place; a mapping written as a list says so. A
user's own blocks go under ``user:``, which nothing reads.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from diffusion_transfer.core.training import TrainConfig
from diffusion_transfer.project import schema as S
from diffusion_transfer.project.schema_editing import EditingParams

#: The head of the error listing them.
UNKNOWN_KEYS = "Invalid parameters: unknown keys, which nothing would read:\n  "

#: The one block nothing reads: a user's own settings (e.g. for a notebook).
USER_BLOCK = "user"

#: Top-level blocks read by nodes without a schema model: their known keys.
_PLAIN_BLOCKS: dict[str, set[str] | None] = {
    "paths": {"checkpoints", "features"},
    "tracking": {"enabled", "log_model"},
    "world": None,  # the world pipeline's own settings (pipelines/world), free-form
}

#: Top-level blocks with a schema model.
_MODEL_BLOCKS: dict[str, Any] = {
    "schedule": S.ScheduleParams, "sampling": S.SamplingParams, "evaluation": S.EvaluationParams,
    "translation": S.TranslationParams, "editing": EditingParams, "classifier": S.ClassifierParams,
    "convert_source": S.ConvertParams, "train": S.TrainParams,
    "methods": ("map", S.MethodParams), "datasets": ("map", S.DatasetParams), "sources": ("map", S.SourceParams),
    # a study's own keys; its override keys (grid, base) are checked with each point before a study runs
    "studies": ("map", S.StudyParams),
}

#: Fields typed ``dict[str, Any]`` that are overrides of another block, checked as that block.
_OVERRIDES: dict[tuple[type, str], Any] = {
    (S.DatasetParams, "train"): S.TrainParams,
    (S.DatasetParams, "translation"): S.TranslationParams,
    (S.DatasetParams, "editing"): EditingParams,
    (S.DatasetParams, "method_overrides"): ("map", S.MethodParams),
    (S.SourceParams, "sampling"): S.SamplingParams,
    (S.MethodParams, "train"): S.TrainParams,
    (S.ClassifierParams, "train"): TrainConfig,
    (S.ClassifierParams, "datasets"): ("map", S.ClassifierParams),
}

#: Keys of an older layout, and where they went.
_MOVED = {
    "curate": "an older layout: 'curate.<dataset>.<key>' is now 'datasets.<dataset>.curation.<key>'",
}

#: What a mapping block holds, for the message when it is written as a list.
_MAPPING_OF = {"datasets": "dataset names", "sources": "source names", "methods": "method names"}

#: Keys a block may hold that its model fills itself (``name`` comes from the key).
_FILLED = {"name"}


def closest(key: str, known: set[str] | list[str]) -> str:
    """`` did you mean 'x'?`` for the closest known key, or ``""``."""
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def unknown_key_problems(parameters: dict[str, Any], locate: Callable[[str], str] | None = None) -> list[str]:
    """One line per unknown key, misplaced old-layout key or list-for-mapping
    in ``parameters``; ``locate(dotted)`` names the file that sets a key."""
    where = locate or (lambda dotted: "")
    problems: list[str] = []

    def report(dotted: str, text: str) -> None:
        file = where(dotted)
        problems.append(f"{file + ': ' if file else ''}'{dotted}': {text}")

    known_top = set(_MODEL_BLOCKS) | set(_PLAIN_BLOCKS) | {USER_BLOCK}
    for key, value in (parameters or {}).items():
        if key == USER_BLOCK:
            continue
        if key in _MOVED:
            report(key, _MOVED[key])
        elif key in _MODEL_BLOCKS:
            _walk(_MODEL_BLOCKS[key], value, key, report)
        elif key in _PLAIN_BLOCKS:
            known = _PLAIN_BLOCKS[key]
            if known is not None and isinstance(value, dict):
                for sub in value:
                    if sub not in known:
                        report(f"{key}.{sub}", f"unknown key{closest(sub, known)} (known: {', '.join(sorted(known))})")
        else:
            report(key, f"unknown top-level block{closest(key, known_top)} Your own settings go under "
                        f"'{USER_BLOCK}:', which nothing reads")
    return problems


def _walk(spec: Any, value: Any, dotted: str, report: Callable[[str, str], None]) -> None:
    if isinstance(spec, tuple):  # ("map", Model): a mapping of names to blocks
        if isinstance(value, list):
            what = _MAPPING_OF.get(dotted.rsplit(".", 1)[-1], "names")
            report(dotted, f"expected a mapping of {what} (name: {{...}}), found a list; write each item as "
                           "'<name>: {...}' under it")
        elif isinstance(value, dict):
            for name, block in value.items():
                _walk(spec[1], block, f"{dotted}.{name}", report)
        return
    if not isinstance(value, dict):
        if isinstance(value, list):
            report(dotted, "expected a mapping of settings (key: value), found a list")
        return  # other wrong types: the model's own validation names them
    fields = spec.model_fields
    free = spec.model_config.get("extra") == "allow"  # a method's hyperparameters: its constructor checks them
    for key, sub in value.items():
        if key not in fields:
            if not free:
                known = set(fields) - _FILLED
                report(f"{dotted}.{key}", f"unknown key{closest(str(key), known)}")
            continue
        child = _OVERRIDES.get((spec, key)) or _model_of(fields[key].annotation)
        if child is not None:
            _walk(child, sub, f"{dotted}.{key}", report)


def _model_of(annotation: Any) -> Any:
    """The model (or ``("map", model)``) a field holds, or None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        found = [m for m in map(_model_of, get_args(annotation)) if m is not None]
        return found[0] if found else None
    if origin is dict:
        inner = _model_of(get_args(annotation)[1])
        return ("map", inner) if isinstance(inner, type) else None
    return None


class KeyLocator:
    """Which parameters file sets a dotted key: ``--params`` first, then the
    run's environment, then base (the one whose value the run gets)."""

    def __init__(self, conf_source: str | Path, env: str | None, base_env: str = "base",
                 runtime_params: dict[str, Any] | None = None) -> None:
        root = Path(conf_source)
        self._trees: list[tuple[str, Any]] = [("--params", runtime_params or {})]
        for folder in [e for e in (env, base_env) if e]:
            for path in sorted((root / folder).glob("parameters*.yml")) + sorted((root / folder).glob("parameters*.yaml")):
                try:
                    tree = yaml.safe_load(path.read_text())
                except (OSError, yaml.YAMLError):
                    continue  # the config loader reports an unreadable file itself
                self._trees.append((_shown(path), tree))

    def merged(self) -> dict[str, Any]:
        """The files' trees, top-level blocks merged (one environment's files
        may each hold part of a block, e.g. ``datasets``)."""
        out: dict[str, Any] = {}
        for _, tree in reversed(self._trees):
            for key, value in (tree or {}).items() if isinstance(tree, dict) else ():
                out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
        return out

    def __call__(self, dotted: str) -> str:
        for name, tree in self._trees:
            node = tree
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, dict) and part in node else _MISSING
                if node is _MISSING:
                    break
            if node is not _MISSING:
                return name
        return ""


_MISSING = object()


def container_conflicts(conf_source: str | Path, env: str, base_env: str = "base") -> list[str]:
    """Where ``env`` writes a block as a list (or a value) that base writes as a
    mapping, or the other way round: Kedro's merge fails there without a name."""
    base, over = KeyLocator(conf_source, None, base_env), KeyLocator(conf_source, env, base_env="")
    out: list[str] = []

    def walk(a: Any, b: Any, dotted: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in set(a) & set(b):
                walk(a[key], b[key], f"{dotted}.{key}" if dotted else str(key))
        elif isinstance(a, dict) != isinstance(b, dict) and a is not None and b is not None:
            what = _MAPPING_OF.get(dotted.rsplit(".", 1)[-1], "settings")
            found = "a list" if isinstance(b, list) else "a mapping" if isinstance(b, dict) else f"the value {b!r}"
            out.append(f"{over(dotted)}: '{dotted}' is {found}, but {base(dotted)} has "
                       + (f"it as a mapping (of {what}); an environment overrides base key by key, so write it as "
                          "'<key>: {...}' entries" if isinstance(a, dict) else f"it as {a!r}"))

    walk(base.merged(), over.merged(), "")
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

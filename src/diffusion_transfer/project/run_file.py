"""A run file (``kedro run --config=FILE``) checked before Kedro reads it:
a YAML error names the file and line, an unknown key the closest option
``kedro run`` accepts, a value of the wrong kind what the option takes.

::

    run:
      pipeline: sdft_aahq
      env: smoke
      params: {train.steps: 4}      # or "train.steps=4"

The keys under ``run:`` are the names of ``kedro run``'s options as Kedro
reads them (``node_names`` for ``--nodes``, ``is_async`` for ``--async``)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import click
import yaml
from kedro.framework.cli.project import run as kedro_run
from omegaconf import OmegaConf

SECTION = "run"
#: Options that take a mapping as well as ``key=value,...`` text.
MAPPING_OPTIONS = ("params", "runner_params")


class RunFileError(click.ClickException):
    """A run file Kedro would fail on; the message names the file and the key or line."""


def run_options() -> dict[str, click.Parameter]:
    """The keys a run file may set: ``kedro run``'s options, by the name Kedro reads."""
    return {p.name: p for p in kedro_run.params if p.name and p.name != "config"}


def _spellings(options: dict[str, click.Parameter]) -> dict[str, str]:
    """Each option's name and its command-line spellings (``nodes``, ``from-nodes``) -> the name."""
    spelled = {name: name for name in options}
    for name, option in options.items():
        for flag in option.opts:
            if flag.startswith("--"):
                spelled.setdefault(flag[2:], name)
                spelled.setdefault(flag[2:].replace("-", "_"), name)
    return spelled


def check_run_file(path: str | Path) -> dict[str, Any]:
    """The options of the run file at ``path``; raises :class:`RunFileError`
    naming the file and the line or key when Kedro could not use it."""
    content = _load(Path(path))
    options = run_options()
    if not isinstance(content, dict):
        content = {}
    problems = [_unknown(str(key), None, options) for key in content if key != SECTION]
    if SECTION not in content and not problems:
        raise RunFileError(f"{path}: no '{SECTION}:' key; a run file lists kedro run's options under it, "
                           f"e.g.\n  {SECTION}:\n    pipeline: sdft_aahq\n    env: smoke")
    section = content.get(SECTION, {})
    if not isinstance(section, dict):
        problems.append(f"'{SECTION}' must be a mapping of kedro run's options (got {section!r})")
        section = {}
    for key, value in section.items():
        if key not in options:
            problems.append(_unknown(str(key), SECTION, options))
        elif (wrong := _wrong_kind(key, value, options[key])) is not None:
            problems.append(wrong)
    if len(problems) == 1:
        raise RunFileError(f"{path}: {problems[0]}")
    if problems:
        raise RunFileError(f"{path}:\n" + "\n".join(f"  {p}" for p in problems))
    return section


def _load(path: Path) -> Any:
    """The file as Kedro loads it (OmegaConf: duplicate keys are errors too)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        context = err.context or ""
        if context and err.context_mark is not None and err.context_mark.line != getattr(mark, "line", None):
            context += f" (line {err.context_mark.line + 1})"
        problem = "; ".join(part for part in (err.problem, context) if part)
        raise RunFileError(f"{path}{where}: {problem or 'not valid YAML'}") from None
    except (yaml.YAMLError, ValueError) as err:  # OmegaConf refuses some YAML (a scalar at the top)
        raise RunFileError(f"{path}: not a YAML mapping: {err}") from None


def _unknown(key: str, parent: str | None, options: dict[str, click.Parameter]) -> str:
    spelled = _spellings(options)
    if parent is None:  # a top-level key: only 'run' is read
        close = [f"{SECTION}.{spelled[key]}"] if key in spelled else difflib.get_close_matches(key, [SECTION], n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"kedro run reads only '{SECTION}:'"
        return f"unknown key '{key}'; {hint}"
    close = difflib.get_close_matches(key, list(spelled), n=1, cutoff=0.6)
    hint = (f"did you mean '{spelled[close[0]]}'?" if close
            else f"the keys are {', '.join(sorted(options))}")
    return f"unknown key '{parent}.{key}'; {hint}"


def _wrong_kind(key: str, value: Any, option: click.Parameter) -> str | None:
    """What is wrong with ``value`` for ``option``, where it is plain: a flag
    takes true or false, the others text (a mapping too for ``params``)."""
    if value is None:
        return None
    if getattr(option, "is_flag", False):
        ok, takes = isinstance(value, bool), "true or false"
    elif key in MAPPING_OPTIONS:
        ok, takes = isinstance(value, (dict, str)), "a mapping or 'key=value,...' text"
    else:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        takes = "text (several names: 'a,b' in one string)" if isinstance(value, list) else "text"
    return None if ok else f"'{SECTION}.{key}' takes {takes} (got {value!r})"

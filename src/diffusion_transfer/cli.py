"""``kedro run`` for this project: Kedro's own command (same options), except
that a failure ends in one ``Error:`` paragraph and exit status 1 instead of
a traceback. ``kedro run --verbose`` prints the traceback too, for debugging.

Kedro picks this module up by name (a project ``cli.py`` overrides its
built-in commands); ``python -m diffusion_transfer`` runs the same command.
``--runner=ThreadRunner`` is refused before anything runs (nodes in threads
share torch's global random stream and diffusers' loading patch). A run file
(``--config=FILE``) is checked before Kedro reads it (``project/run_file.py``).
The paragraph is built by :func:`failure_message`: the node that failed (the
``on_node_error`` hook notes it), the message (known errors already name the
file, folder or parameter and the fix) and, for Kedro's own failures (an
unknown pipeline or environment), what to run instead."""

from __future__ import annotations

import copy
import difflib
import re
import traceback
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import _config_file_callback

from diffusion_transfer.core.io import disk_full_error
from diffusion_transfer.project.run_file import check_run_file

#: Errors whose message is the whole story (it names the input and the fix).
_KNOWN = ("InvalidParametersError", "MissingInputsError", "NonFiniteLossError", "EmptyCurationError",
          "ModelLoadError", "ImageFolderError", "ArcFaceLoadError", "ClipLoadError", "WeightsUnavailable",
          "InceptionWeightsNotFound", "ADMCheckpointError", "UnsupportedScheduleError", "CheckpointMismatchError",
          "DiskFullError")
_VERBOSE_HINT = "Run again with --verbose to see the traceback."
#: What to do, for known errors whose message cannot know it.
_ADVICE = {
    "NonFiniteLossError": "Lower 'train.lr' (or the lr that methods.<method>.train or datasets.<dataset>.train "
                          "set) or 'train.grad_clip'; a rerun resumes from the last good checkpoint.",
}


@click.group(name="diffusion_transfer")
def cli() -> None:
    """Project commands (they override Kedro's of the same name)."""


_THREAD_RUNNER_REFUSED = (
    "--runner={runner} is not supported by this project: nodes in threads share the process's global torch "
    "random stream (models initialise from it, so the numbers would change from run to run) and diffusers' model "
    "loading, which patches torch.nn.Module for the whole process while it loads (a node building a model "
    "meanwhile fails with 'Cannot copy out of meta tensor'). Run without --runner (Kedro's SequentialRunner): on "
    "2 cores, the demo's two longest nodes side by side were only 3-7% faster (docs/BENCHMARK.md).")


def _run(verbose: bool, **options: Any) -> Any:
    runner = options.get("runner") or ""
    if runner.rsplit(".", 1)[-1] == "ThreadRunner":  # also kedro.runner.ThreadRunner
        raise click.ClickException(_THREAD_RUNNER_REFUSED.format(runner=runner))
    try:
        return kedro_run.callback(**options)
    except click.ClickException:
        if verbose:
            traceback.print_exc()
        raise  # already one "Error:" paragraph (parameter and pre-run checks)
    except Exception as err:  # noqa: BLE001 - every failure becomes one paragraph
        if verbose:
            traceback.print_exc()
        raise click.ClickException(failure_message(err, options.get("env"))) from None


def _checked_run_file(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--config``: the run file is checked (file, line, key) before Kedro reads it."""
    if value:
        check_run_file(value)
    return _config_file_callback(ctx, param, value)


def _run_params() -> list[click.Parameter]:
    """Kedro's options, with ``--config`` checked first."""
    params = []
    for param in kedro_run.params:
        if param.name == "config":
            param = copy.copy(param)
            param.callback = _checked_run_file
        params.append(param)
    return params


run = click.Command(
    "run", callback=_run, help=kedro_run.help, short_help=kedro_run.short_help,
    params=[*_run_params(),
            click.Option(["--verbose", "-v"], is_flag=True,
                         help="On failure, print the full traceback before the Error: paragraph.")])
cli.add_command(run)


def failure_message(err: BaseException, env: str | None = None) -> str:
    """One paragraph for a failed run: where it failed, what failed (naming
    the file, folder or parameter), and what to do."""
    kedro_own = _kedro_failure(err, env)
    if kedro_own:
        return kedro_own
    cause = _innermost_known(err) or _out_of_space(err)
    where = "".join(f"{note} " for note in getattr(err, "__notes__", ()) if note.startswith("in node "))
    if cause is not None:
        advice = _ADVICE.get(type(cause).__name__)
        return f"{where}{_text(cause)}{'. ' + advice if advice else ''}".strip()
    text = _text(err)
    return f"{where}{type(err).__name__}: {text} ({_VERBOSE_HINT})".strip()


def _text(err: BaseException) -> str:
    return str(err.message if isinstance(err, click.ClickException) else err).strip()


def _innermost_known(err: BaseException) -> BaseException | None:
    """The deepest error of a known kind in ``err``'s chain: Kedro wraps a
    loader's error (``ModelLoadError``) in its ``DatasetError``."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(cls.__name__ in _KNOWN for cls in type(err).__mro__):
            found = err
        err = err.__cause__ or err.__context__
    return found


_FILEPATH = re.compile(r"filepath=(?:\w*Path\()?'?([^,)'\s]+)")


def _out_of_space(err: BaseException) -> BaseException | None:
    """A write that failed for lack of space in a writer that does not say
    so itself (Kedro's JSON and text datasets), as a ``DiskFullError``
    naming the folder of the file (Kedro's message gives its ``filepath``)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for error in chain:
        if isinstance(error, OSError) and (full := disk_full_error(error, Path.cwd(), None)) is not None:
            where = error.filename or next((m.group(1) for e in chain if (m := _FILEPATH.search(str(e)))), None)
            return disk_full_error(error, Path(where).parent, None) if where else full
    return None


_NO_PIPELINE = re.compile(r"Failed to find the pipeline named '([^']+)'")
_NO_ENV = re.compile(r"Given configuration path either does not exist or is not a valid directory: (\S+)")


def _kedro_failure(err: BaseException, env: str | None) -> str | None:
    """Kedro's own failures (an unknown pipeline, an unknown environment), said
    with what to run instead."""
    text = str(err)
    env_var = f"KEDRO_ENV={env} " if env else ""
    if isinstance(err, ValueError) and (match := _NO_PIPELINE.search(text)):
        from kedro.framework.project import pipelines

        name, names = match.group(1), sorted(pipelines.keys())
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        suggest = f"Did you mean {', '.join(close)}? " if close else ""
        return (f"no pipeline named '{name}'{' in environment ' + repr(env) if env else ''}. {suggest}"
                f"`{env_var}kedro registry list` lists the {len(names)} pipelines; a dataset's pipelines exist "
                "once it is declared under 'datasets' (conf/README.md, 'Your own data and model').")
    if match := _NO_ENV.search(text):
        from pathlib import Path

        conf = Path(match.group(1)).parent
        envs = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "base") if conf.is_dir() else []
        close = difflib.get_close_matches(str(env), envs, n=3, cutoff=0.6)
        suggest = f"Did you mean {', '.join(close)}? " if close else ""
        return (f"no environment '{env}': {match.group(1)} is not a folder. {suggest}The environments are the "
                f"folders of {conf}: {', '.join(envs)}; create conf/{env}/ for a new one (conf/README.md).")
    return None

"""Multiple processes
------------------
With ``config.num_processes > 1``, ``train()`` called in an ordinary process
(a Kedro node under ``kedro run``) starts ``num_processes`` worker processes
on this machine through PyTorch's elastic launcher (``elastic_launch``, what
``torchrun`` runs; ``spawn``, a c10d rendezvous on a free local port), which
sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` /
``MASTER_PORT``, so that accelerate sets up gloo on CPU or NCCL with one GPU
per process (``cuda:<local rank>``; at most ``torch.cuda.device_count()``
processes, which ``CUDA_VISIBLE_DEVICES`` restricts). On an 8-GPU node set
``num_processes: 8`` (and, for a larger global batch than fits,
``gradient_accumulation_steps``). The workers train the same model; rank 0
writes the checkpoints; the caller gets a :class:`TrainResult` built from the
final checkpoint, loaded into the caller's ``model`` (left on its device) and a
copy of it for the EMA.

This needs ``checkpoint_dir`` (the weights come back through it) and a
picklable ``model``, ``loss_fn``, ``teacher``, ``conditions`` and ``on_log``
(module-level classes and functions, not lambdas or local closures): they are
written once to a scratch folder inside ``checkpoint_dir`` and memory-mapped by
the workers. ``on_log`` runs in the rank-0 worker. An exception in a worker
(:class:`NonFiniteLossError`, an exception of ``on_log``...) stops every worker
(the elastic agent's job) and is re-raised in the caller with the worker's
traceback as a note (this module's job: the agent reports only text).

Why not accelerate's ``notebook_launcher``: it wraps the same
``elastic_launch`` but always forks on CPU and CUDA, which fails once an
earlier node of the same ``kedro run`` has initialised CUDA, and it refuses to
start after any ``Accelerator`` exists in the process (every earlier
``train()`` made one).

More than one machine: run the whole Kedro pipeline under ``torchrun`` or
``accelerate launch`` (docs/DISTRIBUTED.md). ``train()`` then finds
``WORLD_SIZE > 1`` and joins that run instead of starting workers;
``num_processes`` must then be 1 or the world size.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import pickle
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..allocator import tune_malloc_at_startup
from .config import TrainConfig, TrainResult
from .ema import schedule_summary

log = logging.getLogger(__name__)

_PICKLED_ARGUMENTS = ("loss_fn", "on_log", "model", "teacher", "conditions")


def launch_workers(
    train_fn: Callable[..., TrainResult],
    model: torch.nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    images: torch.Tensor,
    config: TrainConfig,
    *,
    teacher: torch.nn.Module | None,
    trainable_parameters: Iterable[torch.nn.Parameter] | None,
    conditions: torch.Tensor | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    progress: bool,
    desc: str,
    on_log: Callable[[dict[str, float]], None] | None,
    latents: bool | None = None,
    run_identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Run ``train_fn`` (``loop.train``) in ``config.num_processes`` worker
    processes, wait for them, and return the result read back from the final
    checkpoint."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = config.num_processes
    _check_launch(n, checkpoint_dir)
    job = {"train": train_fn, "model": model, "loss_fn": loss_fn, "images": images, "config": config.model_dump(),
           "teacher": teacher, "trainable": _parameter_names(model, trainable_parameters), "conditions": conditions,
           "checkpoint_dir": str(checkpoint_dir), "progress": progress, "desc": desc, "on_log": on_log,
           "latents": latents, "run_identity": run_identity}
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".launch-", dir=ckpt_dir))
    try:
        _write_job(job, scratch / "job.pt", n)
        del job
        threads = max(1, torch.get_num_threads() // n)  # intra-op threads per worker: share the cores
        launch = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=scratch.name, rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=str(scratch / "logs")),
        )
        log.info("starting %d training processes (torch elastic_launch, spawn)", n)
        try:
            returned = elastic_launch(launch, _worker)(str(scratch), threads)
        except ChildFailedError as exc:
            raise _worker_error(scratch, n, exc) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _result_from_checkpoint(model, teacher, config, Path(returned[0]["checkpoint"]),
                                   returned[0]["resumed_from_step"])


def _check_launch(n: int, checkpoint_dir: str | os.PathLike[str] | None) -> None:
    if checkpoint_dir is None:
        raise ValueError(
            f"num_processes={n} needs a checkpoint_dir: the worker processes hand the trained weights back "
            "through the final checkpoint"
        )
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(
            f"num_processes={n} but only {torch.cuda.device_count()} GPU(s) are visible (one process per GPU)"
        )


def _parameter_names(model: torch.nn.Module, chosen: Iterable[torch.nn.Parameter] | None) -> list[str] | None:
    """The names of ``chosen`` in ``model`` (parameters do not survive pickling as themselves)."""
    if chosen is None:
        return None
    by_id = {id(p): name for name, p in model.named_parameters()}
    chosen = list(chosen)
    if any(id(p) not in by_id for p in chosen):
        raise ValueError("trainable_parameters must be parameters of model")
    if not chosen:
        raise ValueError("no trainable parameters: trainable_parameters is empty")
    return [by_id[id(p)] for p in chosen]


def _write_job(job: dict[str, Any], path: Path, n: int) -> None:
    """Save the workers' arguments once, naming the argument that cannot be pickled."""
    try:
        torch.save(job, path)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        culprit = next((k for k in _PICKLED_ARGUMENTS if job[k] is not None and not _picklable(job[k])),
                       "an argument")
        raise TypeError(
            f"num_processes={n} trains in {n} worker processes, which need {culprit} to be picklable "
            f"(module-level classes and functions, not lambdas or local closures): {type(exc).__name__}: {exc}"
        ) from exc


def _picklable(obj: Any) -> bool:
    try:
        torch.save(obj, io.BytesIO())
    except Exception:  # noqa: BLE001 - PicklingError, AttributeError ("Can't pickle local object"), TypeError
        return False
    return True


def _result_from_checkpoint(model: torch.nn.Module, teacher: torch.nn.Module | None, config: TrainConfig,
                            checkpoint: Path, resumed_from_step: int | None) -> TrainResult:
    """The caller's ``model`` with the final checkpoint's weights, and a copy for the EMA (as ``train()`` returns)."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    model.eval()
    ema = None
    if config.ema_decay > 0:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        ema.load_state_dict(payload["ema"] if payload.get("ema") is not None else payload["model"])
        with torch.no_grad():  # buffers (e.g. running stats) follow the live model, as in train()
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    return TrainResult(model=model, ema_model=ema, history=list(payload.get("history", [])),
                       resumed_from_step=resumed_from_step, checkpoint=checkpoint,
                       schedule=schedule_summary(config, int(payload["step"])))


def _worker(scratch: str, threads: int) -> dict[str, Any] | None:
    """One training process (``RANK`` set by the launcher); rank 0 returns
    where the final weights are."""
    rank = int(os.environ["RANK"])
    tune_malloc_at_startup()  # a fresh process: malloc tuned as in the run that started it
    torch.set_num_threads(threads)
    folder = Path(scratch)
    try:
        job = torch.load(folder / "job.pt", map_location="cpu", weights_only=False, mmap=True)
        model = job["model"]
        params = None
        if job["trainable"] is not None:
            by_name = dict(model.named_parameters())
            params = [by_name[name] for name in job["trainable"]]
        result = job["train"](model, job["loss_fn"], job["images"], job["config"], teacher=job["teacher"],
                              trainable_parameters=params, conditions=job["conditions"],
                              checkpoint_dir=job["checkpoint_dir"], progress=job["progress"], desc=job["desc"],
                              on_log=job["on_log"], latents=job.get("latents"),
                              run_identity=job.get("run_identity"))
        if rank != 0:
            return None
        if result.checkpoint is None:
            raise RuntimeError("training ended without a checkpoint")
        return {"checkpoint": str(result.checkpoint), "resumed_from_step": result.resumed_from_step}
    except BaseException as exc:
        _report_error(folder, rank, exc)
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


def _report_error(folder: Path, rank: int, exc: BaseException) -> None:
    """Leave the exception (pickled, when it can be) and its traceback for the caller."""
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - unpicklable: the traceback text still goes back
        blob = None
    report = {"rank": rank, "time": time.time(), "traceback": traceback.format_exc(), "exc": blob}
    tmp = folder / f".error-{rank}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(report, fh)
    os.replace(tmp, folder / f"error-{rank}.pkl")


def _worker_error(scratch: Path, n: int, exc: Exception) -> BaseException:
    """The exception that stopped the workers (the first one raised), with the
    worker's traceback as a note; else a RuntimeError."""
    reports = []
    for path in scratch.glob("error-*.pkl"):
        try:
            with open(path, "rb") as fh:
                reports.append(pickle.load(fh))
        except Exception:  # noqa: BLE001 - a half-written report
            continue
    if not reports:
        return RuntimeError(f"a training process (of {n}) failed: {exc}")
    first = min(reports, key=lambda r: r["time"])
    where = f"in training process {first['rank']} of {n}"
    err: BaseException | None = None
    if first["exc"] is not None:
        try:
            err = pickle.loads(first["exc"])
        except Exception:  # noqa: BLE001 - not reconstructible here
            err = None
    if not isinstance(err, BaseException):
        return RuntimeError(f"{where}:\n{first['traceback']}")
    err.add_note(f"raised {where}; its traceback:\n{first['traceback']}")
    return err

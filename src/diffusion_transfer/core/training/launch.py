"""Multiple processes
------------------
With ``config.num_processes > 1``, ``train()`` called in an ordinary process
(a Kedro node under ``kedro run``) starts ``num_processes`` worker processes
itself (``spawn``; ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``,
``RANK``/``LOCAL_RANK``/``WORLD_SIZE``), so accelerate sets up gloo on CPU or
NCCL with one GPU per process (``cuda:<rank>``; at most
``torch.cuda.device_count()`` processes, which ``CUDA_VISIBLE_DEVICES``
restricts). No ``accelerate launch`` or ``torchrun`` around ``kedro run`` is
needed: on an 8-GPU node set ``num_processes: 8`` (and, for a larger global
batch than fits, ``gradient_accumulation_steps``). The workers train the same
model; rank 0 writes the checkpoints; the caller gets a :class:`TrainResult`
built from the final checkpoint, loaded into the caller's ``model`` (left on
its device) and a copy of it for the EMA. This needs ``checkpoint_dir`` (the
weights come back through it) and a picklable ``model``, ``loss_fn``,
``teacher``, ``conditions`` and ``on_log`` (module-level classes and functions,
not lambdas or local closures): they are written once to a scratch folder
inside ``checkpoint_dir`` and memory-mapped by the workers. ``on_log`` runs in
the rank-0 worker. An exception in a worker (:class:`NonFiniteLossError`, an
exception of ``on_log``...) stops every worker and is re-raised in the caller
with the worker's traceback as a note. Already inside a distributed run
(``torchrun`` / ``accelerate launch``: ``WORLD_SIZE > 1``), ``train()`` just
joins it; ``num_processes`` must then be 1 or the world size.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import TrainConfig, TrainResult
from .ema import schedule_summary

log = logging.getLogger(__name__)

# --- several processes started from here ------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _picklable(obj: Any) -> Exception | None:
    try:
        torch.save(obj, io.BytesIO())
    except Exception as exc:  # PicklingError, AttributeError ("Can't pickle local object"), TypeError
        return exc
    return None


def _launch(
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
) -> TrainResult:
    """Start ``config.num_processes`` workers running :func:`train`, wait for
    them, and return the result read back from the final checkpoint."""
    n = config.num_processes
    if checkpoint_dir is None:
        raise ValueError(
            f"num_processes={n} needs a checkpoint_dir: the worker processes hand the trained weights back "
            "through the final checkpoint"
        )
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(
            f"num_processes={n} but only {torch.cuda.device_count()} GPU(s) are visible (one process per GPU)"
        )
    names: list[str] | None = None
    if trainable_parameters is not None:
        by_id = {id(p): name for name, p in model.named_parameters()}
        chosen = list(trainable_parameters)
        if any(id(p) not in by_id for p in chosen):
            raise ValueError("trainable_parameters must be parameters of model")
        names = [by_id[id(p)] for p in chosen]
        if not names:
            raise ValueError("no trainable parameters: trainable_parameters is empty")
    job = {"model": model, "loss_fn": loss_fn, "images": images, "config": config.model_dump(),
           "teacher": teacher, "trainable": names, "conditions": conditions, "checkpoint_dir": str(checkpoint_dir),
           "progress": progress, "desc": desc, "on_log": on_log}

    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".launch-", dir=ckpt_dir))
    try:
        try:
            torch.save(job, scratch / "job.pt")
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            culprit = next((k for k in ("loss_fn", "on_log", "model", "teacher", "conditions")
                            if job[k] is not None and _picklable(job[k]) is not None), "an argument")
            raise TypeError(
                f"num_processes={n} trains in {n} worker processes, which need {culprit} to be picklable "
                f"(module-level classes and functions, not lambdas or local closures): {type(exc).__name__}: {exc}"
            ) from exc
        del job
        threads = max(1, torch.get_num_threads() // n)  # intra-op threads per worker: share the cores
        port = _free_port()
        log.info("starting %d training processes (rendezvous on 127.0.0.1:%d)", n, port)
        ctx = torch.multiprocessing.start_processes(
            _worker, args=(n, port, str(scratch), threads), nprocs=n, join=False, start_method="spawn"
        )
        try:
            while not ctx.join():
                pass
        except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as exc:
            raise _worker_error(scratch, n, exc) from None
        finally:  # the caller was interrupted (or a worker failed): stop the rest
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in ctx.processes:
                proc.join()
        info = torch.load(scratch / "result.pt", weights_only=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    checkpoint = Path(info["checkpoint"])
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
    resumed = info["resumed_from_step"]
    return TrainResult(model=model, ema_model=ema, history=list(payload.get("history", [])),
                       resumed_from_step=None if resumed < 0 else int(resumed), checkpoint=checkpoint,
                       schedule=schedule_summary(config, int(payload["step"])))


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


def _worker(rank: int, n: int, port: int, scratch: str, threads: int) -> None:
    """One spawned training process: rank ``rank`` of ``n``."""
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "RANK": str(rank),
        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n), "OMP_NUM_THREADS": str(threads),
    })
    torch.set_num_threads(threads)
    folder = Path(scratch)
    try:
        job = torch.load(folder / "job.pt", map_location="cpu", weights_only=False, mmap=True)
        model = job["model"]
        params = None
        if job["trainable"] is not None:
            by_name = dict(model.named_parameters())
            params = [by_name[name] for name in job["trainable"]]
        from .loop import train  # the loop starts these workers: imported here, not at module load

        result = train(model, job["loss_fn"], job["images"], job["config"], teacher=job["teacher"],
                       trainable_parameters=params, conditions=job["conditions"],
                       checkpoint_dir=job["checkpoint_dir"], progress=job["progress"], desc=job["desc"],
                       on_log=job["on_log"])
        if rank == 0:
            if result.checkpoint is None:
                raise RuntimeError("training ended without a checkpoint")
            info = {"checkpoint": str(result.checkpoint),
                    "resumed_from_step": -1 if result.resumed_from_step is None else result.resumed_from_step}
            torch.save(info, folder / "result.pt")
    except BaseException as exc:
        try:
            blob: bytes | None = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - unpicklable: the traceback text still goes back
            blob = None
        report = {"rank": rank, "time": time.time(), "traceback": traceback.format_exc(), "exc": blob}
        tmp = folder / f".error-{rank}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(report, fh)
        os.replace(tmp, folder / f"error-{rank}.pkl")
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()

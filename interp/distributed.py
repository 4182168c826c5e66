"""Data parallelism for every stage: ``accelerate launch`` / ``torchrun`` ranks, one run folder.

``accelerate launch --num_processes N -m auralens <stage> ...`` (or ``torchrun
--nproc-per-node N -m auralens ...``) starts N copies of the same command.  This module is
the one place that knows about them; with one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``)
every function here is a no-op and the stages run exactly as before.

Design: **per-rank shards in the shared run folder, merged by rank 0** (not rank-0 gathering of
rows through the process group).  Why:

- the generating stages already stream their results to the folder as they go (a row table
  rewritten after each batch, one safetensors file per item or per activation chunk).  Each
  rank keeps doing that, into files no other rank writes: per-item files are named by the
  item's global index, and the row table goes to ``shards/<table>.rank<r>.parquet``
  (:func:`auralens.interp.runs.fill_rows`; probe activation chunks are named by their global chunk
  number and listed in ``activations/index.rank<r>.json``).  A crash loses at most one batch of
  one rank; ``--resume`` (all ranks relaunched, any world size) counts every shard's rows as
  done, so each rank continues where the group stopped.
- big tensors (a 7B model's per-item yields or activations) never travel through the process
  group: rank 0 reads them from the folder as a single-process run would.  Only small Python
  objects go over gloo (:func:`gather_objects`): the per-item reduced activations of
  ``steer fit`` and the final summaries.
- the work is split **by batch**, not by item: the single-process run's batches (``batch_size``
  items of the global to-do list, in order) are dealt round-robin to the ranks, so every
  generation sees exactly the same batch (same left padding) as in one process and the tables,
  per-item files and figures come out identical.

The run folder must therefore be on a file system every rank sees (one node: always; several
nodes: a shared file system such as NFS or Lustre).  Folder creation and the manifest are rank
0's (:func:`auralens.interp.runs.open_run`): every rank validates its options, items and model first,
the ranks agree (:func:`agree`: a failure on any rank is raised on all of them, before any side
effect), rank 0 creates the folder and the others wait.  Fitting steps that need all items
(head ranking, probe fits, tables and figures) run once on rank 0 (:func:`on_main`) and every
rank returns rank 0's summary; direction means gather the per-item activations to every rank.
On other ranks :class:`auralens.interp.runs.RunFolder` skips writes of the run's shared files outside
the row loop (:func:`writes_allowed`), as a safety net for stages whose tail interleaves
writes and sweeps (``steer eval``): every rank computes the same values, rank 0 writes them.
Work is split and gathered only where all ranks run together (:func:`collective`): inside a
rank's own share of a row loop (:func:`rank_local`, e.g. per-input steering collecting one
batch's activations) or inside :func:`on_main`, every helper here works locally.

Launchers: ``torchrun`` and ``accelerate launch --multi_gpu`` (torchrun underneath; on a
machine without GPUs its processes use the CPU and gloo) set ``WORLD_SIZE``; ``accelerate
launch --cpu --num_processes N`` starts N processes only through MPI (``--mpirun_hostfile``),
whose world size is read too (untested here: no MPI installed).  Under ``torchrun`` put ``--``
before the auralens arguments (its parser takes ``--n`` for an abbreviation of ``--nnodes``).

The process group: ``accelerate.PartialState`` (it reads the ``torchrun`` / ``accelerate
launch`` environment and picks nccl on GPUs, gloo on CPU); object collectives and barriers use
a gloo group of their own so they work whatever the device backend.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from auralens.interp.errors import ConfigError
from auralens.interp.stage_config import parse_device_map

T = TypeVar("T")

__all__ = ["active", "agree", "barrier", "collective", "device", "placement", "gather_objects", "is_main", "on_main", "rank", "rank_local",
           "shard", "world", "writes_allowed"]

_STATE: dict[str, Any] = {"group": None, "initialized": False, "local": 0, "solo": False}


#: where launchers put the number of processes: torchrun / accelerate (WORLD_SIZE), MPI (what
#: ``accelerate launch --cpu --mpirun_hostfile`` uses for several CPU processes)
_WORLD_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_world() -> int:
    for var in _WORLD_VARS:
        try:
            n = int(os.environ.get(var, "1"))
        except ValueError:
            continue
        if n > 1:
            return n
    return 1


def _init() -> None:
    """Join the process group once (only when launched with more than one process)."""
    if _STATE["initialized"] or _env_world() <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # init_process_group from the launcher's environment (nccl on GPUs, gloo on CPU)
    _STATE["group"] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    _STATE["initialized"] = True

    atexit.register(_shutdown)


def _shutdown() -> None:
    """Leave the process group at interpreter exit (local, no collective): a process that exits with
    gloo's threads still alive can abort in their destructors ("terminate called without an active
    exception", SIGABRT after the run's work is done)."""
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


def world() -> int:
    """Number of processes of the launch (1 without a launcher)."""
    if _env_world() <= 1:
        return 1
    _init()
    import torch.distributed as dist

    return dist.get_world_size()


def rank() -> int:
    if world() <= 1:
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def active() -> bool:
    """True under a multi-process launch."""
    return world() > 1


def collective() -> bool:
    """True where all ranks reach this point together (a launch, outside :func:`rank_local` and
    :func:`on_main`): only there may a step split its work and gather it.  Inside a rank's own
    share of a row loop (e.g. per-input steering's activations for one batch) work stays local."""
    return active() and _STATE["local"] == 0 and not _STATE["solo"]


def is_main() -> bool:
    return rank() == 0


def device() -> str | None:
    """The device a rank's model goes to under a launch (``cuda:<local rank>`` on GPUs); None
    without a launch (the loader's default)."""
    if not active():
        return None
    import torch

    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def placement(device_map: Any) -> dict[str, Any]:
    """``load_model`` keywords for where this rank's model goes: ``{"device_map": ...}`` for a
    ``--device-map`` (text or value, checked by :func:`auralens.interp.stage_config.parse_device_map`),
    else ``{"device": ...}`` (:func:`device`).  A device map under a multi-process launch is a
    :class:`~auralens.interp.errors.ConfigError`: every rank would spread its replica over the same
    devices (model and data parallelism together are not supported yet)."""

    device_map = parse_device_map(device_map)
    if device_map is None:
        return {"device": device()}
    if active():
        raise ConfigError(f"device_map {device_map!r}: expected one process per model spread over devices, found "
                          f"{world()} processes; launch without accelerate/torchrun or drop --device-map")
    return {"device_map": device_map}


def barrier() -> None:
    if collective():
        import torch.distributed as dist

        dist.barrier(group=_STATE["group"])


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a launch, or
    where the ranks do not run together: see :func:`collective`)."""
    if not collective():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj, group=_STATE["group"])
    return out


def shard(seq: Sequence[T]) -> list[T]:
    """This rank's share of ``seq``: elements ``rank, rank + world, ...`` (all of it without a
    launch, or where the ranks do not run together: see :func:`collective`)."""
    return list(seq[rank() :: world()]) if collective() else list(seq)


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised on any rank, raise that error (the lowest rank's)
    on every rank, so that no rank goes on to a side effect the others will not reach."""
    err: BaseException | None = None
    out: Any = None
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        err = exc
    if not collective():
        if err is not None:
            raise err
        return out
    errs = gather_objects(None if err is None else _portable(err))
    first = next((e for e in errs if e is not None), None)
    if err is not None:
        raise err
    if first is not None:
        raise first
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (writes the run's tables and figures); every rank returns its
    result, or raises its error.  Barriers inside ``fn`` are no-ops (only rank 0 is there);
    where the ranks do not run together (:func:`collective`) ``fn`` simply runs here."""
    if not collective():
        return fn()
    res: tuple[str, Any] = ("ok", None)
    if is_main():
        _STATE["solo"] = True
        try:
            res = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then re-raised
            res = ("error", exc)
        finally:
            _STATE["solo"] = False
        sent = res if res[0] == "ok" else ("error", _portable(res[1]))
    else:
        sent = None
    import torch.distributed as dist

    box = [sent]
    dist.broadcast_object_list(box, src=0, group=_STATE["group"])
    kind, value = res if is_main() else box[0]
    if kind == "error":
        raise value
    return value


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (the auralens errors do), else a RuntimeError with its text."""

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def rank_local() -> Iterator[None]:
    """Inside: this rank writes its own files (per-item files, its row shard) into the folder."""
    old = _STATE["local"]
    _STATE["local"] = old + 1
    try:
        yield
    finally:
        _STATE["local"] = old


def writes_allowed() -> bool:
    """Whether this rank writes run-folder files now: rank 0 always, the others in :func:`rank_local`."""
    return _STATE["local"] > 0 or is_main()

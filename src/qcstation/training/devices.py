"""Where training runs: the device, mixed precision, and several processes started by ``torchrun``.

One training loop serves three set-ups:

- **CPU** (the station PC; the default wherever no CUDA device is visible). Full precision by default;
  ``precision="bf16"`` runs the convolutions in bfloat16 under :func:`torch.autocast`, which is faster on
  CPUs with native bfloat16 instructions (AVX-512 BF16 or AMX) and slower on the others.
- **One GPU**: ``device="cuda"`` (or ``"auto"`` when one is visible). ``precision="auto"`` there is
  automatic mixed precision: bfloat16 where the GPU supports it, else float16 with a
  :class:`torch.amp.GradScaler` against underflowing gradients.
- **Several processes**, one per GPU (or several on a CPU, for tests), started by
  ``torchrun --nproc_per_node=N``: :class:`Distributed` reads the environment torchrun sets (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``), joins the process group (NCCL on GPUs, Gloo on the CPU) and every rank
  trains the same network on its own batches while DistributedDataParallel averages the gradients.

The weights stay float32 in every case, so checkpoints, ``--resume`` and the ONNX export do not depend on
where or in which precision a model was trained.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as tdist

from qcstation.training.errors import TrainingError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
"""Accepted ``device`` values (``cuda:N`` too)."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Accepted ``precision`` values."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); read from ``/proc/cpuinfo``."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ``torchrun`` processes (one process alone: rank 0 of 1).

    Attributes:
        rank: global rank; rank 0 validates, writes checkpoints and logs, and exports.
        local_rank: rank on this machine (which GPU).
        world_size: number of processes.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        """The set-up ``torchrun`` describes in the environment, or a single process."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise TrainingError(f"bad torchrun environment (RANK / LOCAL_RANK / WORLD_SIZE): {e}") from e
        if world < 1 or not 0 <= rank < world:
            raise TrainingError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
        return cls(rank, local, world)

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0."""
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Join the process group (once; NCCL for CUDA devices, Gloo for the CPU)."""
        if not self.active or tdist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # a rank that fails should not leave the others waiting for ever
        tdist.init_process_group(backend, timeout=_dt.timedelta(minutes=30))
        # left to interpreter shutdown, Gloo's worker threads can abort the process (SIGABRT, "terminate
        # called without an active exception") after its work is done; leave the group while Python is alive
        atexit.register(_leave_process_group)
        log.info("rank %d of %d joined the %s process group", self.rank, self.world_size, backend)

    def broadcast_float(self, value: float, device: torch.device) -> float:
        """Rank 0's ``value`` on every rank (identity for a single process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        tdist.broadcast(t, 0)
        return float(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank (call after :meth:`init`)."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, 0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active and tdist.is_initialized():
            tdist.barrier()

    def finish(self) -> None:
        """Leave the process group together, once the ranks need each other no more (every rank calls it).

        A barrier, then ``destroy_process_group`` while Python is alive, as PyTorch asks of a normal end.
        It does not stop torch 2.14's occasional abort in the C++ teardown at exit (:func:`end_process`
        does). The ``atexit`` handler :meth:`init` registers covers a script of one's own whose ranks never
        get here (an error) and exit normally; a process that ends through :func:`end_process` skips it.
        """
        if self.active and tdist.is_initialized():
            tdist.barrier()
            _leave_process_group()


def _leave_process_group() -> None:
    """Destroy the default process group if it is still there (at exit)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """End this ``torchrun`` process now with ``code``: logs and streams flushed, C++ teardown skipped.

    With torch 2.14 and Gloo a rank's process now and then aborts in the C++ teardown at exit (SIGABRT,
    "terminate called without an active exception") after all its work is done, and torchrun then calls the
    whole job failed. Measured with two ranks of a small DDP script, 20-30 exits each: 30 % aborted without
    ``destroy_process_group``, 7-15 % with it (together after a barrier or not), none ending through here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def resolve_device(spec: str, dist: Distributed | None = None) -> torch.device:
    """The torch device for ``spec`` ("auto", "cpu", "cuda", "cuda:N").

    Under ``torchrun`` with CUDA, every process takes the GPU of its ``LOCAL_RANK``.

    Raises:
        TrainingError: an unknown value, or CUDA asked for where none is visible.
    """
    dist = dist or Distributed()
    s = spec.strip().lower()
    if s not in DEVICES and not (s.startswith("cuda:") and s[5:].isdigit()):
        raise TrainingError(f"device: expected one of {', '.join(DEVICES)} or cuda:N, got {spec!r}")
    if s == "cpu" or (s == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError(
            f"device {spec!r}: no CUDA device is visible to torch (torch.cuda.is_available() is False: no "
            "GPU, no driver, or a CPU-only torch build); train on the CPU with device 'cpu' or 'auto'"
        )
    index = int(s[5:]) if s.startswith("cuda:") else (dist.local_rank if dist.active else 0)
    if index >= torch.cuda.device_count():
        raise TrainingError(
            f"device {spec!r}: CUDA device {index} asked for, {torch.cuda.device_count()} visible"
        )
    return torch.device("cuda", index)


def resolve_precision(spec: str, device: torch.device) -> str:
    """The precision training runs in on ``device``: "fp32", "bf16" or "fp16".

    "auto" is mixed precision on a GPU (bf16 where supported, else fp16) and fp32 on the CPU, where every
    recorded run of this project was made. bf16 on the CPU is asked for by name: on a CPU with native
    bfloat16 it bought 1.2x the epochs of the magnetic-tile command but lower validation figures (AUROC
    0.932 vs 0.944, docs/training-magnetic-tile.md, runs 32-33).

    Raises:
        TrainingError: an unknown value, or fp16 on the CPU.
    """
    s = spec.strip().lower()
    if s not in PRECISIONS:
        raise TrainingError(f"precision: expected one of {', '.join(PRECISIONS)}, got {spec!r}")
    if s == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if s == "fp16" and device.type != "cuda":
        raise TrainingError(
            "precision fp16 needs a CUDA device (float16 autocast with gradient scaling); on the CPU use "
            "bf16 or fp32"
        )
    if s == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "precision bf16 on a CPU without native bfloat16 instructions (AVX-512 BF16 / AMX): it will "
            "train, but more slowly than fp32"
        )
    return s


class Amp:
    """Autocast and gradient scaling for one training loop.

    Args:
        precision: "fp32", "bf16" or "fp16" (from :func:`resolve_precision`).
        device: the training device.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass's context: reduced precision where enabled, a no-op in fp32."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward pass and optimizer step (scaled for fp16; a step with inf/NaN gradients is skipped)."""
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state, for ``--resume``."""
        return dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (a no-op for an fp32/bf16 run or an older checkpoint)."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)

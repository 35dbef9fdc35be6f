"""Training on several processes (DDP, FSDP) through HF accelerate.

``nwb-llmdecode fit`` started by ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1
in the environment) trains one decoder with one process per device: accelerate builds the
process group (gloo on CPU, NCCL on CUDA), wraps the model in DDP, or in FSDP when
``accelerate launch --use_fsdp`` (or an accelerate config file) asks for it, and places
each process on its own device. Nothing here runs, and accelerate is not imported, in a
single process: :func:`from_environment` returns ``None`` and the engine's code path
(and numbers) are those of a plain ``fit``.

What makes N processes train the same decoder as one process with the same
``batch_size`` (the *global* batch):

- every process draws the same shuffled window order (same seed), so all see the same
  global batches; each takes its contiguous shard (:meth:`Distributed.shard`);
- the masked MSE of a shard is divided by the number of finite targets of the *global*
  batch (each process counts them itself in the behaviour array it holds, no message)
  and multiplied by the number of processes, because DDP *averages* gradients: the
  average is then the gradient of the single-process loss (:meth:`Distributed.loss`);
  penalties that every process computes alike (the embedding L2) are added unscaled;
- a process whose shard is empty (a last batch smaller than the number of processes)
  runs one window with weight 0, so that every process joins every gradient all-reduce;
- prediction (validation each epoch, the final evaluation) is sharded as well: the
  windows are split in equal-length chunks (padded with a window that is not counted,
  so that FSDP's collectives stay in step), each process stitches its share and the
  per-frame sums and counts are summed over processes: every process ends with the
  same predictions. Early stopping acts on rank 0's validation loss, broadcast to all.

Dropout (the backbone's own, LoRA's, ``input_dropout``) draws other masks in each
process than in one process, so with dropout the equality is statistical, not numeric.

Only rank 0 writes results and checkpoints (:func:`is_main_process`, used by
:mod:`nwb_llmdecode.pipeline`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError, MissingDependencyError
from ..progress import Progress
from ..windows import Block, Stitcher, window_starts

__all__ = [
    "Distributed",
    "expose_layer_classes",
    "from_environment",
    "is_launched",
    "is_main_process",
    "process_index",
    "world_size",
]

log = logging.getLogger(__name__)

#: The Accelerator of this process, by "CPU only" (built once: its state is global).
_ACCELERATORS: dict[bool, Any] = {}


def world_size() -> int:
    """Number of processes of this launch (``WORLD_SIZE``; 1 when not launched).

    Examples
    --------
    >>> world_size() >= 1
    True
    """
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_index() -> int:
    """This process's global rank (``RANK``; 0 when not launched)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` /
    ``torchrun`` (read from the environment; nothing is imported or initialised)."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this process writes: always in a single process, rank 0 of a launch.

    Examples
    --------
    >>> is_main_process() == (process_index() == 0)
    True
    """
    return process_index() == 0


class Distributed:
    """One process of a multi-process fit: the accelerate ``Accelerator`` and the few
    collective steps the training loop needs.

    Build it with :func:`from_environment`.

    Parameters
    ----------
    accelerator
        An ``accelerate.Accelerator`` of this launch.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.wrapped: torch.nn.Module | None = None

    # -- facts ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's index (0 .. world - 1)."""
        return int(self.accelerator.process_index)

    @property
    def world(self) -> int:
        """Number of processes."""
        return int(self.accelerator.num_processes)

    @property
    def device(self) -> torch.device:
        """This process's device (``cuda:LOCAL_RANK`` or ``cpu``)."""
        dev = torch.device(self.accelerator.device)
        return torch.device("cpu") if dev.type == "cpu" else dev

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs per epoch and writes)."""
        return bool(self.accelerator.is_main_process)

    @property
    def uses_fsdp(self) -> bool:
        """Whether the model is sharded (FSDP) rather than replicated (DDP)."""
        from accelerate.utils import DistributedType

        return bool(self.accelerator.distributed_type == DistributedType.FSDP)

    def describe(self) -> str:
        """``"DDP, 2 processes (gloo), rank 0 on cpu"``."""
        kind = "FSDP" if self.uses_fsdp else "DDP"
        backend = "?"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = str(torch.distributed.get_backend())
        return f"{kind}, {self.world} processes ({backend}), rank {self.rank} on {self.device}"

    # -- model and optimiser -------------------------------------------------------------
    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, Any]:
        """Wrap the model (DDP or FSDP) and the optimiser for this launch.

        Returns the wrapped model (call it for training steps) and the optimiser. The
        unwrapped ``model`` keeps sharing its parameters with the DDP wrapper.
        """
        expose_layer_classes(model)
        wrapped, opt = self.accelerator.prepare(model, optimizer)
        self.wrapped = wrapped
        return wrapped, opt

    def state_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose ``state_dict`` / ``load_state_dict`` hold the whole model:
        ``model`` itself under DDP, the FSDP wrapper under FSDP."""
        return self.wrapped if self.uses_fsdp and self.wrapped is not None else model

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` with the gradient all-reduce (and scaling) of the wrapper."""
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> None:
        """Clip by the norm of the (already averaged) global gradient."""
        wrapped = self.wrapped
        if self.uses_fsdp and wrapped is not None:
            params = list(wrapped.parameters())
        self.accelerator.clip_grad_norm_(params, max_norm)

    # -- data ------------------------------------------------------------------------------
    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """This process's contiguous share of a global batch of window starts, and the
        weight of its loss: 1, or 0 with one stand-in window when the share is empty."""
        part = np.array_split(np.asarray(batch), self.world)[self.rank]
        if len(part) == 0:
            return np.asarray(batch)[:1], 0.0
        return part, 1.0

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, *, global_count: int, weight: float
    ) -> torch.Tensor:
        """The shard's part of the global batch's masked MSE, scaled for DDP's average.

        ``sum((pred - target)**2 over finite targets) / global_count * world * weight``:
        summed over processes and divided by ``world`` (what DDP does to gradients) it is
        the masked MSE of the whole global batch.
        """
        mask = torch.isfinite(target)
        diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
        return (diff**2).sum() * (self.world * weight / max(int(global_count), 1))

    # -- collectives ----------------------------------------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return [float(v) for v in self.accelerator.reduce(t, reduction="sum").cpu()]

    def broadcast(self, values: Sequence[float]) -> list[float]:
        """Rank 0's values on every process (so that every process decides alike)."""
        from accelerate.utils import broadcast

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return [float(v) for v in broadcast(t, from_process=0).cpu()]

    def _sum_array(self, a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return self.accelerator.reduce(t, reduction="sum").cpu().numpy()

    def wait(self) -> None:
        """Barrier: every process reaches this point before any goes on."""
        self.accelerator.wait_for_everyone()

    # -- prediction -----------------------------------------------------------------------
    def _my_windows(self, starts: np.ndarray) -> tuple[np.ndarray, int]:
        per = math.ceil(len(starts) / self.world)
        mine = starts[self.rank * per : (self.rank + 1) * per]
        n_real = len(mine)
        pad = np.full(per - n_real, starts[0], dtype=starts.dtype)
        return np.concatenate([mine, pad]), n_real

    def predict_blocks(
        self,
        model: Any,
        z: np.ndarray | torch.Tensor,
        blocks: Sequence[Block],
        *,
        seq_len: int,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        progress: Progress | None = None,
        stage: str = "evaluate",
    ) -> np.ndarray:
        """:func:`~nwb_llmdecode.engine.evaluate.predict_blocks` with the windows shared
        out over the processes; every process returns the whole (same) result.

        Closed-form baselines are not trained here and are predicted whole.
        """
        from .evaluate import predict_blocks

        if not isinstance(model, torch.nn.Module):
            return predict_blocks(
                model, z, blocks, seq_len=seq_len, batch_size=batch_size, progress=progress
            )
        net = self.wrapped if self.uses_fsdp and self.wrapped is not None else model
        zt = z if isinstance(z, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(z))
        zt = zt.to(self.device)
        per_block = [window_starts(b.start, b.stop, seq_len) for b in blocks]
        starts = np.concatenate(per_block) if per_block else np.empty(0, np.int64)
        if len(starts) == 0:
            raise DataError(f"no window of {seq_len} frames fits in the blocks {list(blocks)}")
        mine, n_real = self._my_windows(starts)
        stitcher: Stitcher | None = None
        seq = torch.arange(seq_len, device=self.device)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(mine), batch_size):
                    batch = mine[i : i + batch_size]
                    idx = torch.as_tensor(batch, device=self.device)[:, None] + seq
                    pred = net(zt[idx]).float().cpu().numpy()
                    if stitcher is None:
                        stitcher = Stitcher(zt.shape[0], pred.shape[-1])
                    keep = max(0, min(len(batch), n_real - i))  # the rest is padding
                    if keep:
                        stitcher.add(
                            batch[:keep],
                            pred[:keep],
                            warmup=int(getattr(model, "warmup", 0)),
                            block_start=[b.start for b in blocks],
                        )
                    if progress is not None:
                        done = min(len(starts), (i + len(batch)) * self.world)
                        progress(stage, done, len(starts))
        finally:
            net.train(was_training)
        if stitcher is None:  # pragma: no cover - every process has at least one window
            raise DataError(f"no window of {seq_len} frames fits in the blocks {list(blocks)}")
        stitcher.reduce(self._sum_array)
        return stitcher.result()

    def full_model(self, model: torch.nn.Module, rebuild: Callable[[], Any]) -> Any:
        """The trained model as one plain module on rank 0 (``None`` elsewhere).

        Under DDP that is ``model`` itself. Under FSDP the full state dict is gathered
        to rank 0's CPU (a collective: every process calls this) and loaded into a fresh
        model that ``rebuild`` makes there; it is then moved to rank 0's device, for the
        checkpoint and salience. So FSDP fits models whose *training* (gradients,
        optimiser state) needs several devices while one device holds the weights.
        """
        if not self.uses_fsdp or self.wrapped is None:
            return model
        state = self.accelerator.get_state_dict(self.wrapped)
        if not self.is_main:
            return None
        fresh = rebuild()
        fresh.load_state_dict(state, strict=False)
        fresh.to(self.device)
        fresh.eval()
        return fresh


def expose_layer_classes(model: torch.nn.Module) -> list[str]:
    """Give the decoder its backbone's ``_no_split_modules`` (the transformer layer
    classes, e.g. ``["BertLayer"]``), so that FSDP's ``TRANSFORMER_BASED_WRAP`` policy
    shards per layer without ``--fsdp_transformer_layer_cls_to_wrap``.

    Examples
    --------
    >>> expose_layer_classes(torch.nn.Linear(2, 2))
    []
    """
    backbone = getattr(model, "backbone", None)
    names = list(getattr(backbone, "_no_split_modules", None) or [])
    if names and getattr(model, "_no_split_modules", None) is None:
        model._no_split_modules = names  # type: ignore[assignment]
    return names


def _ddp_kwargs() -> list[Any]:
    from accelerate.utils import DistributedDataParallelKwargs

    # Parameters the loss never reaches (BERT's pooler in "full" mode) have no gradient:
    # DDP must be told, else it waits for them forever.
    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


def from_environment(config: FitConfig | None = None) -> Distributed | None:
    """The :class:`Distributed` of this process when launched (``WORLD_SIZE`` > 1),
    else ``None`` (nothing is imported).

    Parameters
    ----------
    config
        The fit's options: ``device="cpu"`` keeps every process on the CPU; ``"cuda:N"``
        is overridden (each process takes its own local GPU) with a warning.

    Raises
    ------
    MissingDependencyError
        accelerate is not installed.
    ConfigError
        An option that cannot work under this launch (FSDP version 1; the embedding L2
        penalty under FSDP).
    """
    if not is_launched():
        return None
    config = config if config is not None else FitConfig()
    try:
        from accelerate import Accelerator
    except ImportError as e:  # pragma: no cover - accelerate is a core dependency
        raise MissingDependencyError(
            f"fit launched on {world_size()} processes needs accelerate ({e}); "
            "pip install 'accelerate>=1.0'"
        ) from None
    device = config.device
    if device.startswith("cuda:"):
        log.warning(
            "device=%s ignored under a multi-process launch: each process uses its own GPU",
            device,
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device!r} but torch sees no CUDA device; use device 'auto' or 'cpu' "
            "(on CPUs the processes talk over gloo)"
        )
    key = device == "cpu"
    if key not in _ACCELERATORS:  # one per process: its state (process group) is global
        _ACCELERATORS[key] = Accelerator(cpu=key, kwargs_handlers=_ddp_kwargs())
    dist = Distributed(_ACCELERATORS[key])
    _check_launch(dist, config)
    log.info("distributed fit: %s", dist.describe())
    return dist


def _check_launch(dist: Distributed, config: FitConfig) -> None:
    asked_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked_fsdp and not dist.uses_fsdp and dist.is_main:
        log.warning(
            "FSDP was asked for, but accelerate shards models on GPUs only: the %d CPU "
            "processes train with DDP (every process holds the whole model)",
            dist.world,
        )
    if not dist.uses_fsdp:
        return
    if not getattr(dist.accelerator, "is_fsdp2", False):
        raise ConfigError(
            "FSDP version 1 is not supported by fit (its state dicts live on rank 0 only, "
            "so the best epoch cannot be restored on every process); launch with "
            "accelerate launch --use_fsdp --fsdp_version 2"
        )
    for name in ("embedding_l2", "embedding_group_l1"):
        if getattr(config, name) > 0:
            raise ConfigError(
                f"{name}={getattr(config, name)} cannot be used under FSDP (the penalty "
                "reads the sharded input embedding outside the forward pass); set "
                f"{name} = 0 in the --config file"
            )

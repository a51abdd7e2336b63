"""What soul injection needs to run in several processes (``accelerate launch``, DDP) and still train the same numbers.

The data of step ``s`` is ``G = grad_accum * num_processes`` micro-batches, numbered ``m = 0 .. G-1``; micro-batch
``(s, m)`` is a pure function of the seed. accelerate's data-loader sharding hands process ``r`` the micro-batches
with ``m % num_processes == r``, and DDP averages the gradients over processes. So a run on ``P`` processes with
``grad_accum = A`` takes the steps of a single-process run with ``grad_accum = A * P`` (same examples, same loss
weights; equal up to the order of float sums): the *effective batch* ``batch_size * A * P`` decides the result, not
how it is split. One process reads the same micro-batches in the same order as before this module existed.

Dropout masks come from each process's own random generator, so with dropout the split changes the masks (not the
data); with dropout 0 the runs agree up to float summation order. A checkpoint keeps every process's generator
state, so a resumed run continues each one where it stopped.

Explained in notebooks/03_soul_injection.ipynb; README "More than one GPU".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from so8t_core.config import check

# accelerate modes whose model wrapping inject does not handle: FSDP shards the soul's float32 parameters together
# with the frozen base (see README "More than one GPU"); the others are not data parallel in the DDP sense.
UNSUPPORTED = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")


def micro_indices(n_rows: int, seed: int, step: int, micro: int, batch_size: int) -> Tensor:
    """Row indices of micro-batch ``micro`` of step ``step``: a pure function of the seed (resuming replays it).

    Args:
        n_rows: how many training rows there are.
        seed: the run's seed.
        step: optimizer step.
        micro: global micro-batch number within the step (0 .. grad_accum * num_processes - 1).
        batch_size: rows per micro-batch.
    Returns:
        (batch_size,) int64 indices, drawn with replacement.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + micro)
    return torch.randint(n_rows, (batch_size,), generator=g)


class Rows(Dataset):
    """Training rows ``(input_ids[i], attention_mask[i])`` of padded examples, each (T,)."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.input_ids[i], self.attention_mask[i]


class MicroBatches(Sampler[list[int]]):
    """Every micro-batch of steps ``start .. end-1``, in order: ``(s, 0), (s, 1), .., (s, G-1), (s+1, 0), ..``.

    A batch sampler: accelerate shards it by giving process ``r`` every batch whose position is ``r`` modulo the
    number of processes, which is micro-batch ``m = i * P + r`` for its ``i``-th local micro-batch of a step.
    """

    drop_last = True  # the count is a multiple of the process count: accelerate never pads or repeats a batch

    def __init__(self, n_rows: int, seed: int, start: int, end: int, per_step: int, batch_size: int) -> None:
        self.n_rows, self.seed, self.start, self.end = n_rows, seed, start, end
        self.per_step, self.batch_size = per_step, batch_size

    def __len__(self) -> int:
        return max(self.end - self.start, 0) * self.per_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            for m in range(self.per_step):
                yield micro_indices(self.n_rows, self.seed, step, m, self.batch_size).tolist()


def micro_batch_loader(
    data: tuple[Tensor, Tensor], seed: int, start: int, end: int, grad_accum: int, batch_size: int, processes: int
) -> DataLoader:
    """The (not yet sharded) loader of all micro-batches of steps ``start .. end-1`` for ``processes`` processes.

    Its own generator keeps the loader from drawing on torch's global one (dropout's), so creating it changes no
    random number a single-process run would see.

    Args:
        data: (input_ids, attention_mask), each (N, T).
        seed: the run's seed.
        start: first step.
        end: one past the last step.
        grad_accum: micro-batches per process per step.
        batch_size: rows per micro-batch.
        processes: how many processes share each step.
    Returns:
        A ``DataLoader`` of ``(input_ids, attention_mask)`` micro-batches, each (batch_size, T), for
        ``accelerator.prepare`` to shard.
    """
    sampler = MicroBatches(int(data[0].shape[0]), seed, start, end, grad_accum * processes, batch_size)
    return DataLoader(Rows(*data), batch_sampler=sampler, generator=torch.Generator().manual_seed(seed))


def make_accelerator(grad_accum: int, find_unused_parameters: bool) -> Any:
    """An ``accelerate.Accelerator`` for inject: gradient accumulation over ``grad_accum`` micro-batches, no device
    placement (a single process keeps the model where it was loaded), DDP for several processes.

    Args:
        grad_accum: micro-batches per process per optimizer step.
        find_unused_parameters: let DDP skip trainable parameters the loss does not reach (the gate's rotation in
            the LoRA-only baseline).
    Returns:
        The accelerator.
    Raises:
        ValueError: accelerate is configured for a mode inject does not support (FSDP, DeepSpeed, ...) or for
            mixed precision (the soul is computed in float32 on purpose).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    acc = Accelerator(gradient_accumulation_steps=grad_accum, device_placement=False, kwargs_handlers=[ddp])
    mode = acc.distributed_type.name
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    check(
        acc.num_processes == launched,
        "accelerate num_processes",
        acc.num_processes,
        f"but WORLD_SIZE={launched}: the processes would train alone and overwrite each other's files "
        "(on a machine without GPUs set ACCELERATE_USE_CPU=1 for a gloo group)",
    )
    check(
        mode not in UNSUPPORTED,
        "accelerate distributed_type",
        mode,
        "soul injection runs in one process or with DDP (`accelerate launch --multi_gpu`); see README 'More than "
        "one GPU' for FSDP",
    )
    check(
        acc.mixed_precision == "no",
        "accelerate mixed_precision",
        acc.mixed_precision,
        "must be 'no': the soul is computed in float32 and a 4-bit base computes in its compute_dtype already",
    )
    return acc


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type == "cpu" or (a.index or 0) == (b.index or 0))


def place(wrapper: torch.nn.Module, acc: Any) -> None:
    """Put the model on this process's device when there are several processes (DDP needs every parameter there);
    one process leaves it where it was loaded.

    Raises:
        ValueError: a quantized model with parameters elsewhere (it cannot be moved; load it with
            ``device_map={"": local_process_index}`` and put the soul beside it, as ``study.wrap_variant`` does).
    """
    if acc.num_processes == 1 or all(_same_device(p.device, acc.device) for p in wrapper.parameters()):
        return
    quantized = any(
        getattr(m, "is_loaded_in_4bit", False) or getattr(m, "is_loaded_in_8bit", False) for m in wrapper.modules()
    )
    check(
        not quantized,
        "model device",
        sorted({str(p.device) for p in wrapper.parameters()}),
        f"a quantized model must be loaded on this process's device {acc.device} "
        f"(device_map={{'': {acc.local_process_index}}}), with the soul beside it",
    )
    wrapper.to(acc.device)


def mean_over_processes(values: dict[str, float], acc: Any) -> dict[str, float]:
    """The mean of each value over processes (the loss of the whole effective batch); one process: unchanged."""
    if acc.num_processes == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=acc.device)
    return dict(zip(values, acc.reduce(t, reduction="mean").tolist()))


def rng_states(acc: Any | None, device: torch.device) -> dict[str, Tensor]:
    """Every process's random generator state, stacked in process order (rows): ``rng`` (CPU) and, for a model on
    a GPU, ``cuda_rng`` (that GPU's). All processes must call it (it gathers); each gets the same result.

    Args:
        acc: the accelerator, or None for a plain single-process run.
        device: the model's device (its generator draws the dropout masks).
    Returns:
        ``{"rng": (P, n) uint8, ["cuda_rng": (P, m) uint8]}`` on the CPU.
    """
    states = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if acc is None or acc.num_processes == 1:
        return {k: v[None] for k, v in states.items()}
    return {k: acc.gather(v.to(acc.device)[None]).cpu() for k, v in states.items()}


def restore_rng_states(state: dict[str, Tensor], rank: int, device: torch.device) -> None:
    """Set this process's generators from :func:`rng_states`'s rows (a 1-D ``rng`` is an older single-process
    checkpoint)."""
    rng = state["rng"]
    # clone: torch.set_rng_state crashes (SIGSEGV) on a row view with a storage offset, as row r > 0 of a stack is
    torch.set_rng_state((rng[None] if rng.dim() == 1 else rng)[rank].clone())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"][rank].clone(), device)

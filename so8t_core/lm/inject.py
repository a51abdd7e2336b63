"""Soul injection: train LoRA + soul with LM loss, orthogonality guard and PET; checkpoints and exact resume.

Data order is a pure function of (seed, step), and a checkpoint holds the trainable tensors, optimizer,
scheduler and RNG state, so an interrupted run resumed from its last checkpoint ends with the same parameters as
an uninterrupted one. Checkpoints are written into a hidden temporary folder and renamed into place: a crash
mid-write never leaves a checkpoint that looks complete. Every logged step is appended to ``timeline.jsonl``.

The loop runs through ``accelerate``: the same code trains in one process (notebooks, tests) or in several under
``accelerate launch`` with DDP, where ``P`` processes with ``grad_accum = A`` train what one process trains with
``grad_accum = A * P`` (``so8t_core.lm.distributed``). Only the main process writes files.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from so8t_core.config import SoulStageConfig, check, stage_fields
from so8t_core.gate.rotation import commutator_norm, eigen_angles, orthogonality_error
from so8t_core.gate.soul import SoulWrapper
from so8t_core.lm.distributed import (
    make_accelerator,
    mean_over_processes,
    micro_batch_loader,
    place,
    restore_rng_states,
    rng_states,
)

STATE_FILE, META_FILE, TIMELINE = "trainer_state.pt", "trainer.json", "timeline.jsonl"
RESUME_KEYS_IGNORED = ("steps", "checkpoint_every", "log_every", "keep_checkpoints")


@dataclass(frozen=True)
class InjectConfig:
    """Optimisation settings of one injection run.

    The knobs notebook 03 exposes have no default here: build it with ``InjectConfig.from_stage(cfg)`` (or pass
    every one). The others keep theirs.
    """

    steps: int
    batch_size: int
    lr: float  # LoRA
    soul_lr: float  # rotation generators and a learned alpha
    grad_accum: int
    grad_checkpointing: bool
    checkpoint_every: int  # 0: no checkpoints
    seed: int
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    keep_checkpoints: int = 2
    log_every: int = 1

    @classmethod
    def from_stage(cls, cfg: SoulStageConfig, **extra: Any) -> InjectConfig:
        """The settings of notebook 03's runs.

        Args:
            cfg: notebook 03's config (every field named like one of ours is taken from it).
            **extra: fields the stage does not expose (``warmup_steps``, ``keep_checkpoints``, ...).
        Returns:
            The ``InjectConfig``.
        """
        return cls(**stage_fields(cls, cfg, **extra))

    def __post_init__(self) -> None:
        for n in (
            "steps",
            "batch_size",
            "lr",
            "soul_lr",
            "grad_accum",
            "max_grad_norm",
            "log_every",
            "keep_checkpoints",
        ):
            check(getattr(self, n) > 0, n, getattr(self, n), "must be > 0")
        for n in ("warmup_steps", "checkpoint_every"):
            check(getattr(self, n) >= 0, n, getattr(self, n), "must be >= 0")


def rotation_stats(R: Tensor) -> dict[str, float]:
    """Mean/max eigen-angle and mean ||R_b - I||_F of (n_blocks, 8, 8) rotation blocks."""
    ang = eigen_angles(R.detach())
    eye = torch.eye(8, dtype=R.dtype, device=R.device)
    return {
        "angle_mean": ang.mean().item(),
        "angle_max": ang.max().item(),
        "dist_identity": torch.linalg.matrix_norm(R.detach() - eye).mean().item(),
    }


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    gs = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(gs).norm().item() if gs else 0.0


def _trainable(wrapper: SoulWrapper) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in wrapper.named_parameters() if p.requires_grad}


def make_optimizer(wrapper: SoulWrapper, cfg: InjectConfig):
    soul_ids = {id(p) for p in wrapper.soul_parameters()}
    lora = [p for p in _trainable(wrapper).values() if id(p) not in soul_ids]
    groups = [{"params": wrapper.soul_parameters(), "lr": cfg.soul_lr, "weight_decay": 0.0}]
    if lora:
        groups.append({"params": lora, "lr": cfg.lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    warm = max(cfg.warmup_steps, 1)
    decay = lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0))))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, decay)


def _meta(wrapper: SoulWrapper, cfg: InjectConfig, step: int, processes: int) -> dict[str, Any]:
    return {"step": step, "inject": asdict(cfg), "soul": asdict(wrapper.config), "num_processes": processes}


def _processes(accelerator) -> int:
    return 1 if accelerator is None else int(accelerator.num_processes)


def save_checkpoint(
    ckpt_root: Path, wrapper: SoulWrapper, opt, sched, cfg: InjectConfig, step: int, accelerator=None
) -> Path:
    """Write ``ckpt_root/step_NNNNNN`` atomically (temp folder, then rename); prune old ones.

    With several processes every one must call it (their random generator states are gathered); the main process
    writes, the others wait until the checkpoint is in place.
    """
    final = ckpt_root / f"step_{step:06d}"
    rng = rng_states(accelerator, next(wrapper.parameters()).device)
    if accelerator is None or accelerator.is_main_process:
        tmp = ckpt_root / f".tmp_step_{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        wrapper.save(tmp)  # adapter + soul in their standard formats: a checkpoint is also a soul folder
        state = {
            "trainable": {n: p.detach().cpu().clone() for n, p in _trainable(wrapper).items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            **rng,  # one row per process
            "step": step,
        }
        torch.save(state, tmp / STATE_FILE)
        meta = _meta(wrapper, cfg, step, _processes(accelerator))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(ckpt_root.glob("step_*"))[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """Newest complete checkpoint under ``ckpt_root`` (temporary folders are never complete), or None."""
    done = [p for p in sorted(Path(ckpt_root).glob("step_*")) if (p / STATE_FILE).exists()]
    return done[-1] if done else None


def load_checkpoint(path: str | Path, wrapper: SoulWrapper, opt, sched, cfg: InjectConfig, accelerator=None) -> int:
    """Restore a checkpoint into a freshly built wrapper/optimizer; returns the step to continue from.

    Raises:
        FileNotFoundError: not a checkpoint folder.
        ValueError: it was written with a different soul or injection config, or by another number of processes
            (names the differing keys).
    """
    p = Path(path)
    if not (p / STATE_FILE).exists() or not (p / META_FILE).exists():
        raise FileNotFoundError(f"{p}: not a complete checkpoint (needs {STATE_FILE} and {META_FILE})")
    meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
    now = _meta(wrapper, cfg, meta["step"], _processes(accelerator))
    diff = [f"soul.{k}" for k in now["soul"] if now["soul"][k] != meta["soul"].get(k)]
    diff += [
        f"inject.{k}"
        for k in now["inject"]
        if k not in RESUME_KEYS_IGNORED and now["inject"][k] != meta["inject"].get(k)
    ]
    if now["num_processes"] != meta.get("num_processes", 1):  # another split of the effective batch: other data
        diff.append(f"num_processes ({meta.get('num_processes', 1)} then, {now['num_processes']} now)")
    check(not diff, "resume_from", str(p), f"config differs from the checkpoint's in {diff}")
    state = torch.load(p / STATE_FILE, weights_only=True)
    params = _trainable(wrapper)
    check(
        set(params) == set(state["trainable"]),
        "checkpoint parameters",
        sorted(set(params) ^ set(state["trainable"]))[:5],
        "do not match the model's trainable parameters",
    )
    with torch.no_grad():
        for n, t in state["trainable"].items():
            check(t.shape == params[n].shape, n, tuple(t.shape), f"expected {tuple(params[n].shape)}")
            params[n].copy_(t)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rank = 0 if accelerator is None else accelerator.process_index
    restore_rng_states(state, rank, next(wrapper.parameters()).device)
    return int(state["step"])


def _timeline_record(
    wrapper: SoulWrapper, step: int, parts: dict[str, float], grads: dict[str, float], lr: float
) -> dict[str, Any]:
    rot = wrapper.rotation
    with torch.no_grad():
        Rs, Rc, Rt = rot.r_safe.matrices(), rot.r_cmd.matrices(), rot.matrices()
        rec = {
            "step": step,
            "alpha": wrapper.alpha.alpha.item(),
            "sigmoid_alpha": wrapper.alpha.weight.item(),
            "phase": wrapper.alpha.phase(),
            "pet_lambda": wrapper.pet_lambda,
            "lr": lr,
            **parts,
            **grads,
            "orth_error": orthogonality_error(Rt).item(),
            "commutator": commutator_norm(Rc, Rs).item(),
        }
        for name, R in (("r_safe", Rs), ("r_cmd", Rc), ("r_total", Rt)):
            rec.update({f"{name}_{k}": v for k, v in rotation_stats(R).items()})
    return rec


def _train_step(model, batches: Iterator, cfg: InjectConfig, accelerator, device: torch.device) -> dict[str, float]:
    """This process's ``grad_accum`` micro-batches of one step; DDP averages the gradients over processes on the
    last one (``accumulate`` skips the all-reduce before). Returns the loss parts of the whole effective batch."""
    parts = {"loss": 0.0, "lm_loss": 0.0, "ortho_loss": 0.0, "pet_loss": 0.0}
    for _ in range(cfg.grad_accum):
        ids, mask = (t.to(device) for t in next(batches))
        with accelerator.accumulate(model):
            out = model(ids, mask, ids.masked_fill(mask == 0, -100))
            accelerator.backward(out.loss)  # divides by grad_accum
        for k in parts:
            parts[k] += getattr(out, k).item() / cfg.grad_accum
    return mean_over_processes(parts, accelerator)


def _enable_grad_checkpointing(wrapper: SoulWrapper) -> None:
    base = wrapper.model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()


def _start(wrapper: SoulWrapper, opt, sched, cfg: InjectConfig, acc, out: Path | None, resume_from) -> int:
    """Restore the checkpoint to resume from (or seed a fresh run) and prepare ``out``; returns the first step."""
    start = 0
    if resume_from is not None:
        ckpt = latest_checkpoint(out / "checkpoints") if resume_from == "latest" and out else Path(resume_from)
        if ckpt is None:
            raise ValueError(f"resume_from={resume_from!r}: no checkpoint under {out}/checkpoints")
        start = load_checkpoint(ckpt, wrapper, opt, sched, cfg, acc)
    else:
        torch.manual_seed(cfg.seed + acc.process_index)  # each process its own dropout masks; one process: seed
    if out is not None and acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_timeline(out / TIMELINE, start)
    acc.wait_for_everyone()
    return start


def inject(
    wrapper: SoulWrapper,
    data: tuple[Tensor, Tensor],
    cfg: InjectConfig,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train the soul (and LoRA, if the model has it) on token data, in this process or in each process of an
    ``accelerate launch`` (DDP): every process calls it with the same arguments.

    Args:
        wrapper: the SoulWrapper to train (modified in place).
        data: (input_ids, attention_mask), each (N, T) int tensors of padded examples.
        cfg: optimisation settings; ``grad_accum`` counts micro-batches per process, so the effective batch is
            ``batch_size * grad_accum * num_processes``.
        out_dir: where ``timeline.jsonl`` and ``checkpoints/`` go (None: keep nothing on disk); the main process
            writes them.
        resume_from: a checkpoint folder, or ``"latest"`` for the newest under ``out_dir/checkpoints``.
        stop_after: stop once this many steps are done (simulates an interruption in tests).
    Returns:
        The timeline records of the steps run now (the same in every process).
    """
    check(data[0].numel() > 0, "data", tuple(data[0].shape), "no training examples")
    acc = make_accelerator(cfg.grad_accum, find_unused_parameters=not wrapper.use_gate)
    wrapper.train()  # from_pretrained returns eval mode, where gradient checkpointing is silently skipped
    if cfg.grad_checkpointing:
        _enable_grad_checkpointing(wrapper)
    place(wrapper, acc)
    opt, sched = make_optimizer(wrapper, cfg)
    out = Path(out_dir) if out_dir is not None else None
    start = _start(wrapper, opt, sched, cfg, acc, out, resume_from)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    loader = micro_batch_loader(data, cfg.seed, start, end, cfg.grad_accum, cfg.batch_size, acc.num_processes)
    model, acc_opt, loader = acc.prepare(wrapper, opt, loader)  # the scheduler stays as is: one step per step
    batches, device = iter(loader), next(wrapper.parameters()).device
    params = list(_trainable(wrapper).values())
    soul_ids = {id(p) for p in wrapper.soul_parameters()}
    records: list[dict[str, Any]] = []
    quiet = not acc.is_local_main_process  # one progress bar per machine
    for step in tqdm(range(start, end), desc="soul injection", initial=start, total=cfg.steps, disable=quiet):
        wrapper.set_step(step)
        acc_opt.zero_grad(set_to_none=True)
        parts = _train_step(model, batches, cfg, acc, device)
        grads = {
            "grad_norm_soul": _grad_norm(wrapper.soul_parameters()),
            "grad_norm_lora": _grad_norm([p for p in params if id(p) not in soul_ids]),
        }
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = sched.get_last_lr()[0]
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            records.append(_timeline_record(wrapper, step, parts, grads, lr))  # alpha as used in this step
            if out is not None and acc.is_main_process:
                with open(out / TIMELINE, "a", encoding="utf-8") as f:
                    f.write(json.dumps(records[-1]) + "\n")
        acc_opt.step()
        sched.step()
        if out is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(out / "checkpoints", wrapper, opt, sched, cfg, step + 1, acc)
    next(batches, None)  # run the loader to its end, so accelerate's shared gradient state lets go of it
    wrapper.set_step(cfg.steps)
    return records


def _truncate_timeline(path: Path, start: int) -> None:
    """Drop records at or after ``start`` (a resumed run re-logs them)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln)["step"] < start]
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def read_timeline(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/timeline.jsonl``."""
    p = Path(out_dir) / TIMELINE
    return [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln]


def export_soul_weights(timeline: list[dict[str, Any]], path: str | Path) -> int:
    """Write the original design's "soul weights" dataset (JSONL) from a real run's timeline; returns rows.

    Each row: step, alpha_gate, sigmoid_alpha, phase, and for r_safe / r_cmd / r_total the mean and max
    eigen-angle and the mean distance from the identity, plus the commutator and loss parts.
    """
    rows = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in timeline:
            row = {
                "step": r["step"],
                "alpha_gate": r["alpha"],
                "sigmoid_alpha": r["sigmoid_alpha"],
                "phase": r["phase"],
                "commutator_norm": r["commutator"],
                "losses": {k: r[k] for k in ("loss", "lm_loss", "ortho_loss", "pet_loss")},
            }
            for name in ("r_safe", "r_cmd", "r_total"):
                row[name] = {k: r[f"{name}_{k}"] for k in ("angle_mean", "angle_max", "dist_identity")}
            f.write(json.dumps(row) + "\n")
            rows += 1
    return rows

"""Notebook 03's main run (LoRA + soul on notebook 00's base) as a script, for one process or many.

    python -m so8t_core.lm.train_soul --stage00 artifacts/00_base_model --out runs/soul [--profile gpu] [--steps 300]
    accelerate launch --multi_gpu --num_processes 2 -m so8t_core.lm.train_soul --stage00 ... --out ...

Every process loads the base (a 4-bit one onto its own GPU), builds the same variant from the same seed and calls
``inject``, which trains it with DDP: the effective batch is ``batch_size * grad_accum * num_processes``. The main
process writes ``OUT/main_run/`` (timeline, checkpoints), ``OUT/soul/`` (adapter + soul, as notebook 03's
``soul/``) and ``OUT/result.json`` (the variant's result row with held-out perplexity, the process count and the
effective batch). ``--resume`` continues from the newest checkpoint under ``OUT/main_run/checkpoints``.

Parameters are notebook 03's (``SoulStageConfig``): its defaults, then ``params/<profile>.yaml``'s
``03_soul_injection`` section, then the options given here.

Explained in README "More than one GPU".
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml

from so8t_core.artifacts import write_json_atomic
from so8t_core.config import PARAMS_DIR, SoulStageConfig, check
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm import variants as study
from so8t_core.lm.inject import InjectConfig, inject, read_timeline
from so8t_core.lm.loading import read_model_ref
from so8t_core.lm.lora import LoraSettings

STAGE = "03_soul_injection"
# the soul study's, not the main run's
NOT_OPTIONS = (
    "alpha_targets",
    "n_facts",
    "fact_min_count",
    "n_train",
    "n_dev",
    "n_test",
    "a_steps",
    "a_batch",
    "a_seeds",
    "a_lrs",
    "b_steps",
    "b_batch",
    "b_seeds",
    "b_lrs",
    "alpha_grid",
    "retention_docs",
    "n_boot",
)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    check(low in ("true", "false", "1", "0", "yes", "no"), "flag", text, "expected true or false")
    return low in ("true", "1", "yes")


def parser() -> argparse.ArgumentParser:
    """The command line: where to read and write, how to run, and one option per parameter of notebook 03."""
    ap = argparse.ArgumentParser(prog="python -m so8t_core.lm.train_soul", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage00", required=True, type=Path, help="notebook 00's stage folder (artifacts/00_base_model)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (main_run/, soul/, result.json)")
    ap.add_argument("--profile", default=None, help="params/<profile>.yaml whose 03_soul_injection section applies")
    ap.add_argument(
        "--variant", default="soul_scheduled", help="soul_scheduled (notebook 03's main run), lora_only, ..."
    )
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/main_run")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (an interruption)")
    ap.add_argument("--keep-checkpoints", type=int, default=1, help="newest checkpoints to keep (notebook 03: 1)")
    for f in fields(SoulStageConfig):
        if f.name not in NOT_OPTIONS:
            kind = _bool if isinstance(f.default, bool) else type(f.default)
            ap.add_argument(f"--{f.name}", type=kind, default=None, help=f"notebook 03's {f.name} ({f.default!r})")
    return ap


def stage_config(args: argparse.Namespace, params_dir: Path = PARAMS_DIR) -> SoulStageConfig:
    """Notebook 03's config: defaults, then the profile's ``03_soul_injection`` section, then the options given.

    Args:
        args: the parsed command line (``--profile`` and the parameter options; None means not given).
        params_dir: where profiles live.
    Returns:
        The validated stage config.
    Raises:
        ValueError: an unknown profile, a profile key notebook 03 does not have, or an invalid value (named).
    """
    overrides: dict[str, Any] = {}
    if args.profile:
        path = params_dir / f"{args.profile}.yaml"
        check(path.is_file(), "profile", args.profile, f"no {path}")
        overrides |= (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(STAGE) or {}
    overrides |= {k: v for k, v in vars(args).items() if k in SoulStageConfig.__dataclass_fields__ and v is not None}
    defaults = SoulStageConfig().to_dict()
    return SoulStageConfig.from_dict({**defaults, **overrides})


def build(args: argparse.Namespace, cfg: SoulStageConfig, state: Any) -> tuple[SoulWrapper, SoulConfig, Any, Any]:
    """This process's copy of the variant on its device, with notebook 03's data.

    Returns:
        ``(wrapper, soul config, training rows, held-out batches)``.
    """
    four_bit = bool(read_model_ref(args.stage00).get("load_in_4bit", False))
    model, tok, _ = study.load_base(args.stage00, {"": state.local_process_index} if four_bit else None)
    train, heldout = study.corpus_tensors(args.stage00, tok, cfg.seq_len, cfg.batch_size, cfg.eval_docs)
    variants = study.variant_configs(SoulConfig.from_stage(cfg, model.config.hidden_size), list(cfg.alpha_targets))
    check(args.variant in variants, "variant", args.variant, f"must be one of {sorted(variants)}")
    lora = LoraSettings.from_stage(cfg)
    w = study.wrap_variant(model, args.variant, lora, variants[args.variant], cfg.seed)
    if not four_bit:
        w.to(state.device)  # a 4-bit base and its soul are on this process's GPU already
    return w, variants[args.variant], train, heldout


def main(argv: list[str] | None = None) -> int:
    """Train one variant of notebook 03 in this process (one of the processes of a launch); 0 on success."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    args = parser().parse_args(argv)
    cfg = stage_config(args)
    # The process group of a launch (or a single process); inject's Accelerator shares it. Like the Accelerator,
    # ACCELERATE_USE_CPU=1 makes a launch on CPUs a gloo group rather than independent processes.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.time()
    w, soul, train, heldout = build(args, cfg, state)
    effective = cfg.batch_size * cfg.grad_accum * state.num_processes
    state.print(
        f"{args.variant}: {state.num_processes} process(es) ({state.distributed_type.name}), effective batch "
        f"{effective} = batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {state.num_processes}"
    )
    run_dir = args.out / "main_run"
    resume = "latest" if args.resume else None
    inject(
        w, train, InjectConfig.from_stage(cfg, keep_checkpoints=args.keep_checkpoints), run_dir, resume, args.stop_after
    )
    if state.is_main_process and (args.stop_after is None or args.stop_after >= cfg.steps):
        w.save(args.out / "soul")
        row = study.score_variant(w, args.variant, soul, cfg.seed, read_timeline(run_dir), heldout, t0)
        extra = {"num_processes": state.num_processes, "distributed_type": state.distributed_type.name}
        write_json_atomic(args.out / "result.json", {**row, **extra, "effective_batch": effective})
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

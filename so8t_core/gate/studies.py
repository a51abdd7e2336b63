"""Measurements behind notebooks 01 and 02 (and bench/gate.py): map accuracy, costs, geometry of the mix,
and the learned-vs-scheduled alpha experiment. Each returns plain records the notebooks tabulate and plot.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from so8t_core.gate.alpha import AlphaGate, LinearSchedule, phase_status
from so8t_core.gate.rotation import (
    BlockSO8Rotation,
    commutator_norm,
    orthogonality_error,
    rotation_from_skew,
    skew,
)
from so8t_core.timing import median_seconds


def map_accuracy_sweep(
    norms: list[float], n_samples: int, seed: int = 0, dtypes=(torch.float32, torch.float64), maps=("cayley", "exp")
) -> list[dict]:
    """Worst orthogonality error max|R^T R - I| of each map and dtype over random generators of each Frobenius norm.

    Explained in notebooks/01_so8_rotation_math.ipynb.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for norm in norms:
        A = skew(torch.randn(n_samples, 28, generator=g, dtype=torch.float64))
        A = A / torch.linalg.matrix_norm(A)[:, None, None] * norm  # (n, 8, 8), each of Frobenius norm `norm`
        for map in maps:
            for dt in dtypes:
                err = orthogonality_error(rotation_from_skew(A.to(dt), map)).item()
                rows.append({"map": map, "dtype": str(dt).removeprefix("torch."), "norm": norm, "max_error": err})
    return rows


class ElementwiseFloor(nn.Module):
    """The cheapest possible gate: one learned multiply of h. Timing floor for the rotation gates."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, h: Tensor) -> Tensor:
        return h * self.scale


def gate_candidates(width: int, dense: bool = True) -> dict[str, nn.Module]:
    """The gates compared in notebook 01 and bench/gate.py, all mapping (..., width) -> (..., width)."""
    cands: dict[str, nn.Module] = {
        "floor (h * s)": ElementwiseFloor(width),
        "block cayley": BlockSO8Rotation(width, "cayley", init_std=0.1),
        "block exp": BlockSO8Rotation(width, "exp", init_std=0.1),
    }
    if dense:  # what the original design used: a dense orthogonal Linear via matrix_exp
        cands["dense orthogonal"] = nn.utils.parametrizations.orthogonal(nn.Linear(width, width, bias=False))
    return cands


def gate_timings(
    width: int, tokens: int, repeats: int, device: str = "cpu", dtype=torch.float32, dense: bool = True
) -> list[dict]:
    """Forward+backward median seconds of each gate on (tokens, width) inputs, and the ratio to the floor.

    Explained in notebooks/01_so8_rotation_math.ipynb; bench/gate.py runs it at full size.
    """
    cands = {k: m.to(device=device, dtype=dtype) for k, m in gate_candidates(width, dense).items()}
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)

    def step(m: nn.Module) -> Callable[[], None]:
        def f() -> None:
            m.zero_grad(set_to_none=True)
            m(x).float().square().mean().backward()

        return f

    med = median_seconds({k: step(m) for k, m in cands.items()}, repeats, device=device)
    floor = med["floor (h * s)"]
    return [
        {"gate": k, "params": sum(p.numel() for p in cands[k].parameters()), "ms": 1e3 * s, "ratio_to_floor": s / floor}
        for k, s in med.items()
    ]


def commutator_vs_scale(scales: list[float], n_blocks: int = 64, seed: int = 0) -> list[dict]:
    """||R_cmd R_safe - R_safe R_cmd||_F (per block, averaged) as both generators grow."""
    g = torch.Generator().manual_seed(seed)
    pa, pb = torch.randn(2, n_blocks, 28, generator=g, dtype=torch.float64)
    rows = []
    for s in scales:
        Ra, Rb = rotation_from_skew(skew(s * pa)), rotation_from_skew(skew(s * pb))
        rows.append({"scale": s, "commutator_per_block": commutator_norm(Ra, Rb).item() / n_blocks**0.5})
    return rows


def mix_geometry(
    alphas: list[float], init_stds: list[float], hidden: int = 512, n: int = 256, seed: int = 0
) -> list[dict]:
    """How ``h + sigmoid(alpha) R h`` changes the norm and the direction of h.

    ||h + wRh||^2 = (1 + w^2)||h||^2 + 2w h.Rh, so the norm ratio lies in [|1 - w|, 1 + w]; a stronger rotation
    (larger generators) lowers h.Rh, hence both the norm gain and the cosine to h.
    """
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    rows = []
    for std in init_stds:
        torch.manual_seed(seed)
        rot = BlockSO8Rotation(hidden, init_std=std)
        with torch.no_grad():
            rh = rot(h)
            for a in alphas:
                mixed = h + torch.sigmoid(torch.tensor(a)) * rh
                rows.append(
                    {
                        "init_std": std,
                        "alpha": a,
                        "norm_ratio": (mixed.norm(dim=-1) / h.norm(dim=-1)).mean().item(),
                        "cos_to_h": torch.nn.functional.cosine_similarity(mixed, h, dim=-1).mean().item(),
                    }
                )
    return rows


def alpha_experiment(
    alpha_mode: str,
    teacher_alpha: float,
    hidden: int,
    steps: int,
    batch: int,
    lr: float,
    schedule: LinearSchedule,
    seed: int = 0,
    map: str = "cayley",
) -> list[dict]:
    """Fit a student gate to a teacher ``y = h + sigmoid(a*) R* h`` and record alpha along the way.

    The student learns its rotation either way; its alpha is scheduled (the design's annealing) or learned.
    Explained in notebooks/02_alpha_annealing.ipynb.
    """
    torch.manual_seed(seed)
    teacher = BlockSO8Rotation(hidden, map, init_std=0.3).requires_grad_(False)
    w_star = torch.sigmoid(torch.tensor(teacher_alpha))
    student = BlockSO8Rotation(hidden, map, init_std=0.0)
    gate = AlphaGate(alpha_mode, init=schedule(0), schedule=schedule if alpha_mode == "scheduled" else None)
    opt = torch.optim.Adam([p for p in [*student.parameters(), *gate.parameters()] if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    records = []
    for step in tqdm(range(steps), desc=f"alpha {alpha_mode}", leave=False):
        gate.set_step(step)
        h = torch.randn(batch, hidden, generator=g)
        loss = (gate(h, student(h)) - (h + w_star * teacher(h))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        a = gate.alpha.item()
        records.append(
            {
                "step": step,
                "alpha": a,
                "weight": torch.sigmoid(torch.tensor(a)).item(),
                "phase": phase_status(a),
                "loss": loss.item(),
            }
        )
    return records

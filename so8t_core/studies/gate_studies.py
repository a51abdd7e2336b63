"""Measurements behind notebooks 01 and 02 (and bench/gate.py): map accuracy, costs, geometry of the mix,
and the learned-vs-scheduled alpha experiment. Each returns plain records the notebooks tabulate and plot; the
two ``*_verdicts`` functions turn them into the notebooks' findings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from so8t_core.config import check
from so8t_core.gate.alpha import AlphaGate, LinearSchedule, phase_status
from so8t_core.gate.rotation import (
    BlockSO8Rotation,
    commutator_norm,
    orthogonality_error,
    rotation_from_skew,
    skew,
)
from so8t_core.gate.soul import mix
from so8t_core.timing import median_seconds
from so8t_core.verdicts import need


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
            R = rot.matrices()  # (blocks, 8, 8)
            for a in alphas:
                mixed = mix(h, R, torch.sigmoid(torch.tensor(a)))
                rows.append(
                    {
                        "init_std": std,
                        "alpha": a,
                        "norm_ratio": (mixed.norm(dim=-1) / h.norm(dim=-1)).mean().item(),
                        "cos_to_h": torch.nn.functional.cosine_similarity(mixed, h, dim=-1).mean().item(),
                    }
                )
    return rows


TEACHERS = ("dense_orthogonal", "linear")
MODES_2 = ("scheduled", "learned")


def teacher_map(kind: str, hidden: int, seed: int = 0) -> Tensor:
    """A teacher the block gate can only approximate, (H, H): ``y = T h``.

    ``dense_orthogonal``: a random orthogonal matrix over all H dimensions (QR of a Gaussian, signs fixed), which
    no 8x8 block rotation plus residual can represent. ``linear``: ``I + G / sqrt(H)`` with Gaussian G, neither
    orthogonal nor block-diagonal.
    """
    check(kind in TEACHERS, "teacher", kind, f"must be one of {TEACHERS}")
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(hidden, hidden, generator=g)
    if kind == "linear":
        return torch.eye(hidden) + G / hidden**0.5
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R))  # (H, H), Haar-distributed


def alpha_experiment(
    alpha_mode: str,
    teacher: str,
    hidden: int,
    steps: int,
    batch: int,
    lr: float,
    schedule: LinearSchedule,
    seed: int = 0,
    map: str = "cayley",
    init_std: float = 0.0,
    teacher_seed: int | None = None,
    eval_inputs: Tensor | None = None,
) -> list[dict]:
    """Fit a student gate ``h + sigmoid(alpha) R h`` to a teacher not of its form and record alpha along the way.

    The loss is the MSE relative to the teacher's output power, so 1.0 is what predicting 0 scores. The student
    learns its rotation either way; its alpha is scheduled (the design's annealing) or learned from the same start.
    Explained in notebooks/02_alpha_annealing.ipynb.

    Args:
        seed: the run's seed: the student's initial rotation (with ``init_std`` > 0) and the stream of inputs.
        init_std: spread of the student's initial generators (0: the identity rotation).
        teacher_seed: the teacher's seed (default ``seed``); fixed across seeds, the teacher is the task.
        eval_inputs: (N, H) held-out inputs shared by every run; the last record then gains ``eval_item_loss``,
            each input's squared error over the teacher's mean output power on them (their mean is the relative MSE).
    Returns:
        One record per step: ``step``, ``alpha``, ``weight``, ``phase``, ``loss``.
    """
    T = teacher_map(teacher, hidden, seed if teacher_seed is None else teacher_seed)
    torch.manual_seed(seed)
    student = BlockSO8Rotation(hidden, map, init_std=init_std)
    gate = AlphaGate(alpha_mode, init=schedule(0), schedule=schedule if alpha_mode == "scheduled" else None)
    opt = torch.optim.Adam([p for p in [*student.parameters(), *gate.parameters()] if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    records = []
    for step in tqdm(range(steps), desc=f"alpha {alpha_mode}", leave=False):
        gate.set_step(step)
        h = torch.randn(batch, hidden, generator=g)  # (B, H)
        y = h @ T.T  # (B, H)
        loss = (mix(h, student.matrices(), gate.weight) - y).pow(2).mean() / y.pow(2).mean()
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
    if eval_inputs is not None:
        with torch.no_grad():
            y = eval_inputs @ T.T  # (N, H)
            err = (mix(eval_inputs, student.matrices(), gate.weight) - y).pow(2).sum(-1)  # (N,)
            records[-1]["eval_item_loss"] = (err / y.pow(2).sum(-1).mean()).tolist()
    return records


def rotation_verdicts(
    metrics: Mapping[str, Any],
    tol: float = 1e-5,
    det_tol: float = 1e-9,
    slope_tol: float = 0.1,
    order_tol: float = 1e-2,
) -> dict[str, Any]:
    """Notebook 01's findings from its logged metrics.

    Args:
        metrics: needs ``orth_err_{cayley,exp}_float32``, ``det_max_dev_{cayley,exp}``, ``commutator_at_scale_1``,
            ``commutator_small_scale_slope``, ``map_ms_{cayley,exp}`` and ``dense_over_block_params``.
        tol: largest float32 orthogonality error that counts as exact.
        det_tol: largest |det - 1| that counts as det = +1.
        slope_tol: how far from 2 the small-scale log-log slope of the commutator may be.
        order_tol: commutator per block at scale 1 above which the order of the two rotations matters.
    Returns:
        ``maps_orthogonal_float32``, ``det_plus_one_both_maps``, ``order_matters``,
        ``commutator_quadratic_at_small_scale``, ``cheaper_map`` and a one-line ``conclusion``.
    Raises:
        KeyError: a metric is missing.
    """
    m = lambda key: need(metrics, key, "rotation_verdicts")
    worst = max(m("orth_err_cayley_float32"), m("orth_err_exp_float32"))
    ms = {"cayley": m("map_ms_cayley"), "exp": m("map_ms_exp")}
    cheaper = min(ms, key=ms.__getitem__)
    out = {
        "maps_orthogonal_float32": worst <= tol,
        "det_plus_one_both_maps": max(m("det_max_dev_cayley"), m("det_max_dev_exp")) < det_tol,
        "order_matters": m("commutator_at_scale_1") > order_tol,
        "commutator_quadratic_at_small_scale": abs(m("commutator_small_scale_slope") - 2) < slope_tol,
        "cheaper_map": cheaper,
    }
    exact = "give exact rotations" if out["maps_orthogonal_float32"] else "do not both stay orthogonal"
    order = "depends" if out["order_matters"] else "barely depends"
    out["conclusion"] = (
        f"Cayley and exp {exact} in float32 (worst |R^T R - I| {worst:.1e}); R_cmd R_safe {order} on the order "
        f"(commutator {m('commutator_at_scale_1'):.2g} per block at scale 1); a block gate stores "
        f"{m('dense_over_block_params'):.0f}x fewer parameters than a dense orthogonal weight; {cheaper} maps "
        f"{max(ms.values()) / ms[cheaper]:.1f}x faster."
    )
    return out


def rotation_reading(metrics: Mapping[str, Any], verdicts: Mapping[str, Any]) -> list[str]:
    """Notebook 01's reading: sentences quoting this run's measured values.

    Args:
        metrics: the stage's metrics (as for ``rotation_verdicts``; ``gate_ratio_*`` entries are quoted when present).
        verdicts: ``rotation_verdicts(metrics)``.
    Returns:
        One sentence per finding.
    """
    m = lambda key: need(metrics, key, "rotation_reading")
    lines = [str(verdicts["conclusion"])]
    lines.append(
        f"det = +1 held for both maps to {max(m('det_max_dev_cayley'), m('det_max_dev_exp')):.1e}; a reflection "
        f"(Householder, det {m('householder_det'):+.0f}) is orthogonal but out of reach of either map."
    )
    slope = m("commutator_small_scale_slope")
    shape = "quadratically, as theory says" if verdicts["commutator_quadratic_at_small_scale"] else "not quadratically"
    lines.append(f"At small scales the two orders part {shape} (log-log slope {slope:.2f}, theory 2).")
    ratios = {k.removeprefix("gate_ratio_"): v for k, v in metrics.items() if k.startswith("gate_ratio_")}
    if ratios:
        quoted = ", ".join(f"{k} {v:.1f}x" for k, v in sorted(ratios.items(), key=lambda kv: kv[1]))
        lines.append(f"Forward+backward cost over the elementwise floor on this CPU: {quoted}.")
    return lines

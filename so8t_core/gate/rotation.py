"""Block-diagonal SO(8) rotations: skew generators, the Cayley and exponential maps, composition and checks.

The hidden state of width H is cut into H // 8 blocks of 8; each block is turned by its own rotation
R_b = map(A_b), where A_b is skew-symmetric (A^T = -A) and so lives in so(8), a 28-dimensional space.
Both maps land in SO(8) exactly (det = +1, not just O(8)):

    cayley(A) = (I - A)^{-1} (I + A)          (I - A is always invertible: A's eigenvalues are imaginary)
    exp(A)    = sum_k A^k / k!

The gate of the original design composes two such rotations, R_total = R_cmd @ R_safe; SO(8) is not
commutative, so the order matters (``commutator_norm`` measures by how much).

Explained in notebooks/01_so8_rotation_math.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

N = 8
N_GENERATORS = N * (N - 1) // 2  # 28 = dim so(8)
MAPS = ("cayley", "exp")


def _check_map(map: str) -> None:
    if map not in MAPS:
        raise ValueError(f"map={map!r}: unknown rotation map, expected one of {MAPS}")


def skew(params: Tensor) -> Tensor:
    """Skew-symmetric 8x8 matrices from their 28 free parameters.

    Args:
        params: (..., 28) coordinates on the basis E_ij - E_ji, i < j (row-major order).
    Returns:
        (..., 8, 8) A with A^T = -A.
    """
    if params.shape[-1] != N_GENERATORS:
        raise ValueError(f"params.shape={tuple(params.shape)}: last dimension must be {N_GENERATORS}")
    i, j = torch.triu_indices(N, N, offset=1, device=params.device)
    upper = params.new_zeros(*params.shape[:-1], N, N)
    upper[..., i, j] = params
    return upper - upper.transpose(-1, -2)


def unskew(A: Tensor) -> Tensor:
    """Inverse of ``skew``: the 28 upper-triangle entries of (..., 8, 8) skew matrices."""
    i, j = torch.triu_indices(N, N, offset=1, device=A.device)
    return A[..., i, j]


def so8_basis(dtype: torch.dtype = torch.float32) -> Tensor:
    """The 28 generators E_ij - E_ji of so(8) as a (28, 8, 8) tensor."""
    return skew(torch.eye(N_GENERATORS, dtype=dtype))


def cayley(A: Tensor) -> Tensor:
    """Cayley map so(8) -> SO(8): (I - A)^{-1} (I + A), batched over leading dims."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(eye - A, eye + A)


def inverse_cayley(R: Tensor) -> Tensor:
    """A = (R - I)(R + I)^{-1}; defined when R has no eigenvalue -1 (always true for cayley's image)."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    # (R - I)(R + I)^{-1} = ((R + I)^{-T} (R - I)^T)^T; solve instead of forming an inverse
    return torch.linalg.solve((R + eye).transpose(-1, -2), (R - eye).transpose(-1, -2)).transpose(-1, -2)


def rotation_from_skew(A: Tensor, map: str = "cayley") -> Tensor:
    """Apply the chosen map ("cayley" or "exp") to skew matrices (..., 8, 8)."""
    _check_map(map)
    return cayley(A) if map == "cayley" else torch.linalg.matrix_exp(A)


def rotate_blocks(h: Tensor, R: Tensor) -> Tensor:
    """Rotate the last dimension of h block by block.

    Args:
        h: (..., H) hidden states, H = n_blocks * 8.
        R: (n_blocks, 8, 8) rotation blocks.
    Returns:
        (..., H) with block b replaced by R_b @ h_b.
    """
    n_blocks = R.shape[0]
    if h.shape[-1] != n_blocks * N:
        raise ValueError(f"h.shape[-1]={h.shape[-1]}: expected {n_blocks * N} for {n_blocks} blocks")
    hb = h.reshape(*h.shape[:-1], n_blocks, N)  # (..., blocks, 8)
    out = torch.einsum("...bj,bij->...bi", hb, R.to(h.dtype))  # (..., blocks, 8)
    return out.reshape(h.shape)


class BlockSO8Rotation(nn.Module):
    """One so(8) generator (28 free parameters) per 8-wide block of the hidden state.

    Args:
        hidden_size: width H of the hidden state; must be a multiple of 8.
        map: "cayley" or "exp" (matrix exponential).
        init_std: std of the normal init of the generators; 0 gives the identity rotation.

    Explained in notebooks/01_so8_rotation_math.ipynb.
    """

    def __init__(self, hidden_size: int, map: str = "cayley", init_std: float = 0.0) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size <= 0 or hidden_size % N:
            raise ValueError(f"hidden_size={hidden_size!r}: must be a positive multiple of 8")
        _check_map(map)
        if init_std < 0:
            raise ValueError(f"init_std={init_std!r}: must be >= 0")
        self.hidden_size, self.map, self.n_blocks = hidden_size, map, hidden_size // N
        self.generators = nn.Parameter(torch.randn(self.n_blocks, N_GENERATORS) * init_std)

    def skew(self) -> Tensor:
        """(n_blocks, 8, 8) skew-symmetric generators."""
        return skew(self.generators)

    def matrices(self) -> Tensor:
        """(n_blocks, 8, 8) rotation blocks."""
        return rotation_from_skew(self.skew(), self.map)

    def dense(self) -> Tensor:
        """(H, H) block-diagonal rotation (for checks and plots; never needed in the forward pass)."""
        return torch.block_diag(*self.matrices())

    def forward(self, h: Tensor) -> Tensor:
        return rotate_blocks(h, self.matrices())

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, map={self.map!r}, blocks={self.n_blocks}"


class ComposedSO8Rotation(nn.Module):
    """The original design's gate rotation R_total = R_cmd @ R_safe (R_safe acts first).

    Args:
        hidden_size: width H, a multiple of 8.
        map: "cayley" or "exp", used for both factors.
        init_std: init std of both generators (0: identity).

    Explained in notebooks/01_so8_rotation_math.ipynb.
    """

    def __init__(self, hidden_size: int, map: str = "cayley", init_std: float = 0.0) -> None:
        super().__init__()
        self.r_safe = BlockSO8Rotation(hidden_size, map, init_std)
        self.r_cmd = BlockSO8Rotation(hidden_size, map, init_std)
        self.hidden_size, self.map, self.n_blocks = hidden_size, map, hidden_size // N

    def matrices(self) -> Tensor:
        """(n_blocks, 8, 8) blocks of R_cmd @ R_safe."""
        return compose(self.r_cmd.matrices(), self.r_safe.matrices())

    def dense(self) -> Tensor:
        """(H, H) block-diagonal R_total."""
        return torch.block_diag(*self.matrices())

    def forward(self, h: Tensor) -> Tensor:
        return rotate_blocks(h, self.matrices())


def compose(R_cmd: Tensor, R_safe: Tensor) -> Tensor:
    """R_total = R_cmd @ R_safe per block; (n_blocks, 8, 8) each."""
    if R_cmd.shape != R_safe.shape:
        raise ValueError(f"R_cmd.shape={tuple(R_cmd.shape)} != R_safe.shape={tuple(R_safe.shape)}")
    return R_cmd @ R_safe


def commutator_norm(Ra: Tensor, Rb: Tensor) -> Tensor:
    """Frobenius norm of Ra Rb - Rb Ra, summed in quadrature over blocks (0 iff the factors commute)."""
    return torch.linalg.matrix_norm(Ra @ Rb - Rb @ Ra).pow(2).sum().sqrt()


def orthogonality_error(R: Tensor) -> Tensor:
    """max |R^T R - I| over all blocks (0 for an exact rotation)."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return (R.transpose(-1, -2) @ R - eye).abs().amax()


def orthogonality_loss(R: Tensor) -> Tensor:
    """Mean squared Frobenius norm of R^T R - I per block; a differentiable guard against drift."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return (R.transpose(-1, -2) @ R - eye).pow(2).sum(dim=(-1, -2)).mean()


def determinants(R: Tensor) -> Tensor:
    """det of each block, (n_blocks,); +1 for SO(8), -1 for a reflection."""
    return torch.linalg.det(R)


def eigen_angles(R: Tensor) -> Tensor:
    """Rotation angles of each 8x8 block, (n_blocks, 4), sorted, in [0, pi].

    A rotation of R^8 has eigenvalues e^{+-i theta_k}, k = 1..4: each plane it turns, and by how much.
    """
    theta = torch.linalg.eigvals(R.detach().double()).angle().abs()  # (n_blocks, 8): each theta twice
    return theta.sort(dim=-1).values[..., ::2].to(R.dtype)

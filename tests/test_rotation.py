import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_core.gate.rotation import (
    BlockSO8Rotation,
    ComposedSO8Rotation,
    cayley,
    commutator_norm,
    determinants,
    eigen_angles,
    inverse_cayley,
    orthogonality_error,
    rotate_blocks,
    rotation_from_skew,
    skew,
    so8_basis,
    unskew,
)

MAPS = ("cayley", "exp")
seeds = st.integers(0, 2**31 - 1)
norms = st.floats(0.0, 10.0)


def random_skew(seed: int, norm: float, n_blocks: int = 4, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n_blocks, 28, generator=g, dtype=torch.float64)
    A = skew(p)
    A = A / torch.linalg.matrix_norm(A)[:, None, None].clamp_min(1e-12) * norm  # Frobenius norm = norm
    return A.to(dtype)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, norm=norms, map=st.sampled_from(MAPS))
def test_orthogonal_in_fp32_up_to_norm_10(seed, norm, map):
    R = rotation_from_skew(random_skew(seed, norm), map)
    assert orthogonality_error(R).item() <= 1e-5


@settings(max_examples=40, deadline=None)
@given(seed=seeds, norm=norms, map=st.sampled_from(MAPS))
def test_det_is_plus_one_and_inverse_is_transpose(seed, norm, map):
    R = rotation_from_skew(random_skew(seed, norm, dtype=torch.float64), map)
    torch.testing.assert_close(determinants(R), torch.ones(R.shape[0], dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.inv(R), R.transpose(-1, -2), atol=1e-9, rtol=0)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, norm=st.floats(0.0, 5.0))
def test_cayley_round_trip(seed, norm):
    A = random_skew(seed, norm, dtype=torch.float64)
    torch.testing.assert_close(inverse_cayley(cayley(A)), A, atol=1e-8, rtol=0)


@settings(max_examples=30, deadline=None)
@given(seed=seeds)
def test_random_pairs_do_not_commute(seed):
    Ra = cayley(random_skew(seed, 2.0, dtype=torch.float64))
    Rb = cayley(random_skew(seed + 1, 2.0, dtype=torch.float64))
    assert commutator_norm(Ra, Rb).item() > 1e-3
    assert commutator_norm(Ra, Ra).item() < 1e-10  # a rotation commutes with itself


def test_skew_basis_is_28_independent_skew_matrices():
    B = so8_basis(torch.float64)
    assert B.shape == (28, 8, 8)
    torch.testing.assert_close(B.transpose(-1, -2), -B)
    assert torch.linalg.matrix_rank(B.reshape(28, 64)).item() == 28
    p = torch.randn(3, 28, dtype=torch.float64)
    torch.testing.assert_close(unskew(skew(p)), p)


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.5])
def test_single_plane_rotation_matches_cos_sin(theta):
    # theta * (E_01 - E_10) generates a rotation by theta in the (0, 1) plane: exp gives cos/sin exactly,
    # cayley of t*(E_01 - E_10) turns by 2*atan(t).
    A = torch.zeros(1, 8, 8, dtype=torch.float64)
    A[0, 0, 1], A[0, 1, 0] = -theta, theta
    R = torch.linalg.matrix_exp(A)[0]
    assert math.isclose(R[0, 0].item(), math.cos(theta), abs_tol=1e-12)
    assert math.isclose(R[1, 0].item(), math.sin(theta), abs_tol=1e-12)
    angles = eigen_angles(rotation_from_skew(A, "exp"))[0]
    torch.testing.assert_close(angles, torch.tensor([0, 0, 0, theta], dtype=torch.float64), atol=1e-9, rtol=0)
    t = math.tan(theta / 2)
    angles_c = eigen_angles(rotation_from_skew(A / theta * t, "cayley"))[0]
    assert math.isclose(angles_c[-1].item(), theta, abs_tol=1e-9)


@pytest.mark.parametrize("map", MAPS)
def test_forward_equals_dense_block_diagonal_matmul(map):
    torch.manual_seed(0)
    rot = BlockSO8Rotation(24, map=map, init_std=0.5).double()
    h = torch.randn(2, 5, 24, dtype=torch.float64)
    dense = rot.dense()
    assert dense.shape == (24, 24)
    assert torch.count_nonzero(dense[:8, 8:]) == 0  # off-diagonal blocks are empty
    torch.testing.assert_close(rot(h), h @ dense.T)
    torch.testing.assert_close(rot(h[0, 0]), dense @ h[0, 0])  # any leading shape, even none


@pytest.mark.parametrize("map", MAPS)
def test_gradcheck_float64(map):
    torch.manual_seed(0)
    rot = BlockSO8Rotation(8, map=map, init_std=0.3).double()  # one block: 28 + 16 inputs to differentiate
    h = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    fn = lambda g, x: rotate_blocks(x, rotation_from_skew(skew(g), map))
    assert torch.autograd.gradcheck(fn, (rot.generators.detach().clone().requires_grad_(), h))


def test_zero_init_is_identity_and_parameter_count():
    rot = BlockSO8Rotation(3072)
    assert sum(p.numel() for p in rot.parameters()) == 3072 // 8 * 28 == 10752
    h = torch.randn(4, 3072)
    torch.testing.assert_close(rot(h), h)


def test_composition_order_is_cmd_after_safe():
    torch.manual_seed(1)
    gate = ComposedSO8Rotation(16, init_std=0.5).double()
    h = torch.randn(7, 16, dtype=torch.float64)
    torch.testing.assert_close(gate(h), gate.r_cmd(gate.r_safe(h)))
    swapped = gate.r_safe(gate.r_cmd(h))
    assert (gate(h) - swapped).abs().max() > 1e-3  # order matters


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"hidden_size": 30}, "hidden_size=30"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"hidden_size": 16, "map": "qr"}, "map='qr'"),
        ({"hidden_size": 16, "init_std": -1.0}, "init_std=-1.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        BlockSO8Rotation(**kwargs)


def test_wrong_width_input_is_rejected():
    with pytest.raises(ValueError, match=r"h.shape"):
        BlockSO8Rotation(16)(torch.randn(2, 24))

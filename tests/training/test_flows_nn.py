"""The flow transforms: log-dets against autograd Jacobians, the planar invertibility constraint, MADE's
autoregressive masks in both orders, MaskedAffine's inverse and normalised density, sample axes, and tracing."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from training.nn import flows
from training.nn.flows import MADE, IAFStep, MaskedAffine

ORDERS = ["natural", "reversed"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def randn(*shape, seed=0, scale=1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def per_example_jacobians(f, z: torch.Tensor) -> torch.Tensor:
    """f maps z [B, D] row by row to [B, D] -> the B Jacobians [B, D, D]."""
    j = jacobian(f, z)  # [B, D, B, D]
    rows = torch.arange(len(z))
    return j[rows, :, rows, :]


def planar_params(b=6, d=3, seed=0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, w, bias); even rows have raw w . u = -3, which alone would make the step non-invertible."""
    u, w, bias = randn(b, d, seed=seed), randn(b, d, seed=seed + 1), randn(b, 1, seed=seed + 2)
    wu = (w * u).sum(dim=-1, keepdim=True)
    u[::2] -= ((wu + 3.0) * w / w.square().sum(dim=-1, keepdim=True))[::2]
    return u, w, bias


def test_planar_log_det_matches_autograd_and_the_constraint_makes_it_invertible():
    u, w, b = planar_params()
    raw = (w * u).sum(dim=-1)
    assert torch.allclose(raw[::2], torch.full_like(raw[::2], -3.0))
    w_u_hat = (w * flows.planar_u_hat(u, w)).sum(dim=-1)
    assert (w_u_hat >= -1).all() and torch.allclose(w_u_hat, -1 + torch.nn.functional.softplus(raw))
    # tanh' peaks where w . z + b = 0: there an unconstrained step has det 1 + w . u = -2 on the even rows
    z = randn(6, 3, seed=5)
    z_peak = z - ((z * w).sum(dim=-1, keepdim=True) + b) * w / w.square().sum(dim=-1, keepdim=True)
    unconstrained = per_example_jacobians(lambda z: z + u * torch.tanh((z * w).sum(-1, keepdim=True) + b), z_peak)
    assert (torch.linalg.det(unconstrained)[::2] < 0).all()
    for z in (z_peak, randn(6, 3, seed=6), randn(6, 3, seed=7, scale=3.0)):
        z_new, log_det = flows.planar(z, u, w, b)
        assert z_new.shape == z.shape and log_det.shape == (6,) and log_det.dtype == torch.float64
        sign, log_abs_det = torch.linalg.slogdet(per_example_jacobians(lambda z: flows.planar(z, u, w, b)[0], z))
        assert (sign > 0).all()
        torch.testing.assert_close(log_det, log_abs_det, rtol=0, atol=1e-6)


def test_planar_sample_axis_equals_a_loop_over_samples():
    u, w, b = planar_params(b=4, d=5)
    z = randn(3, 4, 5, seed=8)  # [S, B, D]
    z_new, log_det = flows.planar(z, u, w, b)
    assert z_new.shape == (3, 4, 5) and log_det.shape == (3, 4)
    loop = [flows.planar(zs, u, w, b) for zs in z]
    torch.testing.assert_close(z_new, torch.stack([zn for zn, _ in loop]), rtol=0, atol=1e-14)
    torch.testing.assert_close(log_det, torch.stack([ld for _, ld in loop]), rtol=0, atol=1e-14)


@pytest.mark.parametrize("order", ORDERS)
def test_made_is_autoregressive_in_its_order(order):
    d, p, c = 4, 3, 2
    torch.manual_seed(0)
    made = MADE(d, hidden=12, outputs_per_dim=p, context=c, order=order).double()
    z, h = randn(d, seed=1), randn(c, seed=2)
    jz = jacobian(lambda z: made(z, h), z).permute(0, 2, 1)  # [D out, D in, P]
    before = torch.ones(d, d, dtype=torch.bool)  # [d, j]: z_j comes before z_d in the order
    before = before.tril(-1) if order == "natural" else before.triu(1)
    assert (jz[~before] == 0).all()
    assert (jz[before] != 0).all()
    jh = jacobian(lambda h: made(z, h), h)  # [D, P, C]: every output sees the context, the first one included
    assert (jh != 0).all()
    assert made(randn(5, 6, d), randn(6, c)).shape == (5, 6, d, p)


def test_made_of_one_dimension_depends_on_the_context_only():
    torch.manual_seed(0)
    made = MADE(1, hidden=4, outputs_per_dim=2, context=3).double()
    z, h = randn(1, seed=1), randn(3, seed=2)
    assert (jacobian(lambda z: made(z, h), z) == 0).all() and (jacobian(lambda h: made(z, h), h) != 0).any()
    with pytest.raises(ValueError):
        made(z)


@pytest.mark.parametrize("order", ORDERS)
def test_iaf_log_det_matches_a_triangular_autograd_jacobian(order):
    torch.manual_seed(0)
    step = IAFStep(4, hidden=16, context=3, order=order).double()
    z, h = randn(5, 4, seed=1), randn(5, 3, seed=2)
    z_new, log_det = step(z, h)
    assert z_new.shape == (5, 4) and log_det.shape == (5,) and log_det.dtype == torch.float64
    j = per_example_jacobians(lambda z: step(z, h)[0], z)  # [B, D, D]
    upper, lower = j.triu(1), j.tril(-1)  # natural: z_new_d depends on z_<=d, so J is lower triangular
    zero, nonzero = (upper, lower) if order == "natural" else (lower, upper)
    assert (zero == 0).all() and (nonzero != 0).sum() == 5 * 6
    sign, log_abs_det = torch.linalg.slogdet(j)
    assert (sign > 0).all()
    torch.testing.assert_close(log_det, log_abs_det, rtol=0, atol=1e-10)
    assert (j.diagonal(dim1=1, dim2=2) < 1).all()  # the diagonal is sigma in (0, 1)


def test_iaf_sample_axis_equals_a_loop_over_samples():
    torch.manual_seed(0)
    step = IAFStep(3, hidden=8, context=2, order="reversed").double()
    z, h_shared, h_each = randn(4, 5, 3, seed=1), randn(5, 2, seed=2), randn(4, 5, 2, seed=3)  # S = 4, B = 5
    for h in (h_shared, h_each):
        z_new, log_det = step(z, h)
        assert z_new.shape == (4, 5, 3) and log_det.shape == (4, 5)
        loop = [step(z[s], h if h.dim() == 2 else h[s]) for s in range(4)]
        torch.testing.assert_close(z_new, torch.stack([zn for zn, _ in loop]), rtol=0, atol=1e-14)
        torch.testing.assert_close(log_det, torch.stack([ld for _, ld in loop]), rtol=0, atol=1e-14)
    plain = IAFStep(3, hidden=8).double()  # no context
    assert plain(z)[0].shape == (4, 5, 3)


@pytest.mark.parametrize("order", ORDERS)
def test_masked_affine_inverts_and_its_log_det_matches_autograd(order):
    torch.manual_seed(0)
    layer = MaskedAffine(4, hidden=16, order=order).double()
    with torch.no_grad():  # larger outputs than the default init, but alpha stays within its bound
        layer.made.net[-1].weight.mul_(4.0)
    x = randn(6, 4, seed=1, scale=2.0)
    u, log_det = layer(x)
    assert u.shape == x.shape and log_det.shape == (6,)
    assert (log_det.abs() > 0.1).all()  # a transform far from volume-preserving
    torch.testing.assert_close(layer.inverse(u), x, rtol=0, atol=1e-6)
    sign, log_abs_det = torch.linalg.slogdet(per_example_jacobians(lambda x: layer(x)[0], x))
    assert (sign > 0).all()
    torch.testing.assert_close(log_det, log_abs_det, rtol=0, atol=1e-10)


def test_masked_affine_density_integrates_to_one_on_a_grid():
    torch.manual_seed(1)
    layer = MaskedAffine(2, hidden=8, order="reversed", scale_bound=0.5).double()
    with torch.no_grad():  # a visibly non-Gaussian density whose mass outside the grid is ~3e-5 (by sampling)
        layer.made.net[-1].weight.mul_(2.0)
    step = 0.05
    axis = torch.arange(-6.0, 6.0 + step / 2, step, dtype=torch.float64)  # 241 points
    x = torch.cartesian_prod(axis, axis)  # [241^2, 2]
    with torch.no_grad():
        u, log_det = layer(x)
        log_p = -0.5 * u.square().sum(dim=-1) - np.log(2 * np.pi) + log_det
    assert log_det.std() > 0.1  # the Jacobian varies over the grid
    assert abs(log_p.exp().sum().item() * step**2 - 1.0) < 2e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace and the TorchScript ONNX exporter
def test_planar_and_iaf_trace_and_export_without_data_dependent_control_flow():
    import onnxruntime as ort

    u, w, b = (t.float() for t in planar_params(b=4, d=3))

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.step = IAFStep(3, hidden=8, context=2)

        def forward(self, z, u, w, b, h):
            z1, ld1 = flows.planar(z, u, w, b)
            z2, ld2 = self.step(z1, h)
            return z2, ld1 + ld2

    torch.manual_seed(0)
    module = Both().eval()
    trace_args = (torch.randn(2, 4, 3), u, w, b, torch.randn(4, 2))  # z [S, B, D], h [B, C]
    new_args = (torch.randn(2, 4, 3), u.flip(0), w, b, torch.randn(4, 2))
    onnx = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, trace_args)
        torch.onnx.export(module, trace_args, onnx, dynamo=False, opset_version=17)
        expected, from_trace = module(*new_args), traced(*new_args)
    session = ort.InferenceSession(onnx.getvalue())
    from_onnx = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), new_args, strict=True)})
    for actual in (from_trace, from_onnx):
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_allclose(np.asarray(a), e.numpy(), rtol=1e-5, atol=1e-5)


def test_folding_the_masks_keeps_made_outputs_and_its_autoregressive_property():
    torch.manual_seed(0)
    made = MADE(6, hidden=12, outputs_per_dim=2, layers=2)
    z = torch.randn(4, 6, requires_grad=True)
    before = made(z)
    flows.fold_masks(made)
    for layer in made.net:
        assert layer.mask.shape == () and (layer.weight[layer.weight != 0].numel() < layer.weight.numel())
    after = made(z)
    assert torch.allclose(before, after, atol=1e-6)
    grad = torch.autograd.grad(after[:, 2].sum(), z)[0]  # output 2 sees inputs 0 and 1 only (natural order)
    assert (grad[:, 2:] == 0).all() and (grad[:, :2] != 0).any()

"""The coupling-flow transforms: round trips, log-dets against autograd Jacobians, the conditioning halves of the
masks, the bounded scale, squeeze's layout, ActNorm's data-dependent initialisation, a NICE density that integrates
to one, and tracing and ONNX export at a new batch size."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from training.nn.coupling import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DiagonalScaling,
    FlowSequence,
    Invertible1x1Conv,
    Permutation,
    Squeeze,
    squeeze,
    unsqueeze,
)

IMAGE = (2, 4, 4, 4)  # [B, C, H, W]
VECTOR = (2, 6)  # [B, D]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def randn(*shape, seed=0, scale=1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter, the zero-initialised last layers included, so no step is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def initialized_actnorm(channels: int, seed: int = 0) -> ActNorm:
    """An ActNorm initialised on a batch with channel means -2..4 and stds 0.5..3.5: far from the identity."""
    layer = ActNorm(channels).double().train()
    stds, means = torch.linspace(0.5, 3.5, channels).double(), torch.linspace(-2, 4, channels).double()
    layer(randn(8, channels, 4, 4, seed=seed) * stds[:, None, None] + means[:, None, None])
    return layer


def nice_stack(dim: int, hidden: int = 16, log_scale: list[float] | None = None, noise: float = 0.3) -> FlowSequence:
    """Additive couplings (weights perturbed by `noise`) and a diagonal scaling, by default 0.1, -0.2, 0.3, ..."""
    flow = perturb(FlowSequence([AdditiveCoupling(dim, hidden, 0), Permutation(dim, "random"),
                                 AdditiveCoupling(dim, hidden, 1), AdditiveCoupling(dim, hidden, 0),
                                 DiagonalScaling(dim)]), noise)
    if log_scale is None:
        log_scale = [0.1 * (d + 1) * (-1) ** d for d in range(dim)]
    with torch.no_grad():
        flow.transforms[-1].log_scale.copy_(torch.tensor(log_scale))
    return flow


def glow_stack(channels: int) -> FlowSequence:
    return FlowSequence([initialized_actnorm(channels), Invertible1x1Conv(channels, seed=0),
                         AffineCoupling(channels, 8, "channel", 0), AffineCoupling(channels, 8, "checkerboard", 1),
                         Squeeze(), AffineCoupling(4 * channels, 8, "channel", 1), Permutation(4 * channels, "random")])


# name -> (a float64 transform with non-trivial weights, its input shape, whether it preserves volume)
CASES = {
    "additive_parity": (lambda: perturb(AdditiveCoupling(6, 16, 1), 0.5), VECTOR, True),
    "additive_tensor_mask": (lambda: perturb(AdditiveCoupling(6, 16, torch.tensor([1, 1, 0, 0, 1, 0])), 0.5),
                             VECTOR, True),
    "diagonal": (lambda: perturb(DiagonalScaling(6), 0.5), VECTOR, False),
    "permutation_reverse": (lambda: Permutation(6), VECTOR, True),
    "permutation_random_channels": (lambda: Permutation(4, "random", seed=3), IMAGE, True),
    "affine_checkerboard_0": (lambda: perturb(AffineCoupling(4, 8, "checkerboard", 0), 0.3), IMAGE, False),
    "affine_checkerboard_1": (lambda: perturb(AffineCoupling(4, 8, "checkerboard", 1), 0.3), IMAGE, False),
    "affine_channel_0": (lambda: perturb(AffineCoupling(4, 8, "channel", 0), 0.3), IMAGE, False),
    "affine_channel_1": (lambda: perturb(AffineCoupling(4, 8, "channel", 1), 0.3), IMAGE, False),
    "squeeze": (lambda: Squeeze(), IMAGE, True),
    "actnorm": (lambda: initialized_actnorm(4), IMAGE, False),
    "conv1x1": (lambda: perturb(Invertible1x1Conv(4, seed=0), 0.3), IMAGE, False),
    "nice_sequence": (lambda: nice_stack(6), VECTOR, False),
    "glow_sequence": (lambda: perturb(glow_stack(4), 0.2), IMAGE, False),
}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, bool]:
    torch.manual_seed(0)
    make, shape, volume_preserving = CASES[name]
    return make().double().eval(), randn(*shape, seed=1, scale=1.5), volume_preserving


def per_example_jacobians(f, x: torch.Tensor) -> torch.Tensor:
    """f maps x [B, N] row by row to [B, N] -> the B Jacobians [B, N, N]."""
    j = jacobian(f, x)  # [B, N, B, N]
    rows = torch.arange(len(x))
    return j[rows, :, rows, :]


@pytest.mark.parametrize("name", CASES)
def test_every_transform_inverts_both_ways(name):
    layer, x, volume_preserving = build(name)
    with torch.no_grad():
        y, log_det = layer(x)
        assert y.numel() == x.numel() and log_det.shape == (2,) and log_det.dtype == torch.float64
        assert (y.flatten(1) - x.flatten(1)).abs().max() > 0.1  # not the identity
        if volume_preserving:
            assert (log_det == 0).all()
        else:
            assert (log_det.abs() > 0.1).all()
        torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-10)
        z = randn(*y.shape, seed=2)
        torch.testing.assert_close(layer(layer.inverse(z))[0], z, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_log_det_matches_the_autograd_jacobian(name):
    layer, x, _ = build(name)
    shape = x.shape
    j = per_example_jacobians(lambda x: layer(x.view(shape))[0].flatten(1), x.flatten(1))  # [B, N, N]
    _, log_abs_det = torch.linalg.slogdet(j)
    torch.testing.assert_close(layer(x)[1], log_abs_det, rtol=0, atol=1e-10)


def test_a_sequence_sums_the_log_dets_and_inverts_in_reverse_order():
    layer, x, _ = build("glow_sequence")
    with torch.no_grad():
        y, total = x, 0
        for step in layer.transforms:
            y, step_log_det = step(y)
            total = total + step_log_det
        torch.testing.assert_close(layer(x), (y, total), rtol=0, atol=0)
        undone = y
        for step in reversed(layer.transforms):
            undone = step.inverse(undone)
        torch.testing.assert_close(layer.inverse(y), undone, rtol=0, atol=0)
    with pytest.raises(ValueError):
        FlowSequence([])


def expected_keep(kind: str, parity: int) -> torch.Tensor:
    """The conditioning half of an image [*, 4, 4, 4] as a bool mask broadcastable to it."""
    if kind == "checkerboard":
        h, w = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
        return ((h + w) % 2 == parity)[None, None]
    return ((torch.arange(4) < 2) == (parity == 0))[None, :, None, None]


@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
def test_affine_coupling_passes_the_conditioning_half_and_reads_only_it(kind):
    keeps = []
    for parity in (0, 1):
        layer, x, _ = build(f"affine_{kind}_{parity}")
        keep = expected_keep(kind, parity).expand_as(x)
        keeps.append(keep)
        with torch.no_grad():
            y, _ = layer(x)
            assert torch.equal(y[keep], x[keep]) and (y[~keep] != x[~keep]).all()
            changed = x + randn(*x.shape, seed=5) * ~keep  # the transformed half only: same s and t
            for a, b in zip(layer.scale_and_shift(changed), layer.scale_and_shift(x), strict=True):
                assert torch.equal(a, b)
            assert (layer.scale_and_shift(x + randn(*x.shape, seed=6) * keep)[0] != layer.scale_and_shift(x)[0]).any()
    assert torch.equal(keeps[0], ~keeps[1])


@pytest.mark.parametrize(("mask", "keep"), [(0, [1, 0, 1, 0, 1, 0]), (1, [0, 1, 0, 1, 0, 1]),
                                            (torch.tensor([1, 1, 0, 0, 1, 0]), [1, 1, 0, 0, 1, 0])])
def test_additive_coupling_passes_the_conditioning_half_and_reads_only_it(mask, keep):
    keep = torch.tensor(keep, dtype=torch.bool).expand(*VECTOR)
    layer = perturb(AdditiveCoupling(6, 16, mask), 0.5).double()
    x = randn(*VECTOR, seed=1)
    with torch.no_grad():
        y, _ = layer(x)
        assert torch.equal(y[keep], x[keep]) and (y[~keep] != x[~keep]).all()
        assert torch.equal(layer.shift(x + randn(*VECTOR, seed=2) * ~keep), layer.shift(x))


def test_fresh_couplings_and_1x1_conv_start_as_the_identity():
    x, v = randn(*IMAGE, seed=1), randn(*VECTOR, seed=1)
    with torch.no_grad():
        for layer, inputs in [(AffineCoupling(4, 8, "checkerboard"), x), (AffineCoupling(4, 8, "channel", 1), x),
                              (AdditiveCoupling(6, 16), v), (DiagonalScaling(6), v), (ActNorm(4).eval(), x)]:
            y, log_det = layer.double()(inputs)
            assert torch.equal(y, inputs) and torch.equal(log_det, torch.zeros(2, dtype=torch.float64))
        conv = Invertible1x1Conv(4).double()
        torch.testing.assert_close(conv.weight @ conv.weight.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-6)
        assert conv(x)[1].abs().max() < 1e-4


def test_the_affine_scale_stays_within_its_bound_whatever_the_network_outputs():
    layer = perturb(AffineCoupling(4, 8, "channel", scale_bound=1.5), 30.0).double().eval()
    x = randn(*IMAGE, seed=1, scale=3.0)
    with torch.no_grad():
        s, _ = layer.scale_and_shift(x)
        y, log_det = layer(x)
        assert s.abs().max() <= 1.5 and (s.abs() > 1.4).sum() > 8  # saturated, yet bounded
        assert torch.isfinite(log_det).all() and (log_det.abs() <= 1.5 * 2 * 4 * 4).all()
        torch.testing.assert_close(log_det, s.sum(dim=(1, 2, 3)), rtol=0, atol=0)
        torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-6)  # t is large here


def test_squeeze_moves_each_2x2_block_into_channels_and_unsqueeze_undoes_it():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    z = squeeze(x)
    assert z.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(unsqueeze(z), x)
    w = randn(2, 12, 2, 3, seed=1)
    assert torch.equal(squeeze(unsqueeze(w)), w)


def test_permutations_are_fixed_saved_buffers():
    x = randn(*VECTOR, seed=1)
    assert torch.equal(Permutation(6)(x)[0], x.flip(1))
    random = Permutation(6, "random", seed=4)
    assert torch.equal(random.perm.sort().values, torch.arange(6)) and not torch.equal(random.perm, torch.arange(6))
    assert torch.equal(random.perm, Permutation(6, "random", seed=4).perm)
    assert torch.equal(random(x)[0], random(x)[0]) and "perm" in random.state_dict()
    with pytest.raises(ValueError):
        Permutation(6, "sorted")


def test_actnorm_initialises_from_its_first_training_batch_only():
    layer = ActNorm(4).double()
    assert not layer.initialized
    means, stds = torch.tensor([-2.0, 0.0, 1.0, 5.0]), torch.tensor([0.5, 1.0, 2.0, 3.0])
    x = randn(8, 4, 4, 4, seed=1) * stds[:, None, None] + means[:, None, None]
    y, log_det = layer(x)
    assert layer.initialized and "initialized" in layer.state_dict()
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), correction=0), torch.ones(4, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    expected = -16 * x.std(dim=(0, 2, 3), correction=0).log().sum()
    torch.testing.assert_close(log_det, expected.expand(8), rtol=0, atol=1e-12)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(randn(8, 4, 4, 4, seed=2))  # a second training batch leaves the parameters alone
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k])
    loaded = ActNorm(4).double()
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded(x)[0], y, rtol=0, atol=0)  # loaded: not re-initialised on this batch either
    fresh = ActNorm(4).double().eval()
    assert torch.equal(fresh(x)[0], x) and not fresh.initialized  # no initialisation in eval mode


def test_nice_density_integrates_to_one_on_a_grid():
    torch.manual_seed(0)
    flow = nice_stack(2, hidden=8, log_scale=[0.5, -0.2], noise=0.4).double()
    step = 0.05
    axis = torch.arange(-7.0, 7.0 + step / 2, step, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)  # [281^2, 2]
    with torch.no_grad():
        u, log_det = flow(x)
        log_p = -0.5 * u.square().sum(dim=-1) - np.log(2 * np.pi) + log_det
    torch.testing.assert_close(log_det, torch.full_like(log_det, 0.3), rtol=0, atol=1e-7)
    sheared = (u - x * torch.tensor([0.5, -0.2], dtype=torch.float64).exp()).abs()  # the couplings' shifts
    assert sheared[log_p.exp() > 1e-3].max() > 0.5
    assert abs(log_p.exp().sum().item() * step**2 - 1.0) < 2e-4


def test_float32_and_float64_agree():
    layer, x, _ = build("glow_sequence")
    y64, ld64 = layer(x)
    y32, ld32 = layer.float()(x.float())
    assert y32.dtype == ld32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ld32.double(), ld64, rtol=1e-5, atol=1e-4)


class Inverse(torch.nn.Module):
    def __init__(self, flow: FlowSequence):
        super().__init__()
        self.flow = flow

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(y)


def real_nvp(channels: int) -> FlowSequence:
    flow = FlowSequence([AffineCoupling(channels, 8, "checkerboard", 0), AffineCoupling(channels, 8, "checkerboard", 1),
                         Squeeze(), ActNorm(4 * channels), Invertible1x1Conv(4 * channels),
                         AffineCoupling(4 * channels, 8, "channel", 0), AffineCoupling(4 * channels, 8, "channel", 1)])
    flow.train()(torch.randn(4, channels, 8, 8) * 2 + 1)  # ActNorm's data-dependent initialisation
    return perturb(flow, 0.1)


@pytest.mark.parametrize(("shape", "new_shape"), [((2, 1, 8, 8), (3, 1, 8, 8)), ((2, 1, 8, 8), (3, 1, 12, 16)),
                                                  ((2, 6), (3, 6))])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace and the TorchScript ONNX exporter
def test_trace_and_onnx_export_give_the_eager_outputs_at_a_new_batch_size(shape, new_shape):
    import onnxruntime as ort

    torch.manual_seed(0)
    flow = (real_nvp(1) if len(shape) == 4 else nice_stack(6)).eval()
    dynamic = {0: "batch", 2: "height", 3: "width"} if len(shape) == 4 else {0: "batch"}
    x_trace, x_new = torch.randn(*shape), torch.randn(*new_shape)
    with torch.no_grad():
        y_trace, y_new = flow(x_trace)[0], flow(x_new)[0]
    for module, trace_input, new_input in [(flow, x_trace, x_new), (Inverse(flow), y_trace, y_new)]:
        onnx = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, (trace_input,))
            torch.onnx.export(module, (trace_input,), onnx, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": dynamic})
            expected, from_trace = module(new_input), traced(new_input)
        session = ort.InferenceSession(onnx.getvalue())
        from_onnx = session.run(None, {"x": new_input.numpy()})
        expected = expected if isinstance(expected, tuple) else (expected,)
        from_trace = from_trace if isinstance(from_trace, tuple) else (from_trace,)
        for actual in (from_trace, from_onnx):
            assert len(actual) == len(expected)
            for a, e in zip(actual, expected, strict=True):
                np.testing.assert_allclose(np.asarray(a), e.numpy(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(Inverse(flow)(y_new), x_new, rtol=0, atol=1e-4)

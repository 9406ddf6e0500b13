"""Deep Variational Bayes Filter on a simulated pendulum: a locally linear latent state space learned from frames.

Karl et al. 2017, "Deep Variational Bayes Filters: Unsupervised Learning of State Space Models from Raw Data"
(arXiv 2016). The latent state z_t [D] moves by a locally linear transition conditioned on the action u_t [U]:

    z_{t+1} = A(z_t) z_t + B(z_t) u_t + C(z_t) w_t,   (A, B, C)(z) = sum_i alpha_i(z) (A_i, B_i, C_i),
    alpha(z) = softmax(f(z)) over M matrices (a small net f),  w_t [W] ~ N(0, I) under the prior.

The filter is reparameterized: the recognition net infers the process noise, w_t ~ q(w_t | z_t, u_t, x_{t+1}),
and the next state is the transition of the sampled w_t, so that every state is a transition's output and the
gradient of the reconstructions shapes the transition. z_1 ~ q(z_1 | x_1..x_K) from the first K frames (a
velocity needs two), against the prior N(0, I). Frames are emitted by p(x_t | z_t): a Bernoulli per pixel of the
intensity (level / 255, the cross-entropy of a grey value). The loss is the negative ELBO per sequence, its KL
terms warmed up linearly over warmup_steps (the paper's annealing).

`kind: "vae-rnn"` builds the baseline instead: a per-frame VAE (the same frame encoder and decoder) whose latent
means a GRU predicts one step ahead from the past means and actions; it has no transition model of its own.

The process noise has W <= D dimensions (`noise`; 0: D), and `noise_scale` bounds every entry of every C_i. The
simulator has none (the torques are known): with W < D the filter corrects the state along W directions per step,
and with C bounded a large correction costs a large w, whose KL the transition saves by predicting the move. With
W = D and C free, a first run learned A ~ I and a random walk driven by w (README, "Pendulum dynamics").

Exported (a state-space procedure; the service rolls it): `filter_init` (frames [B, K, 1, 16, 16], noise [B, D])
-> z; `filter_step` (z, u [B, U], x [B, 1, 16, 16], noise [B, W]) -> next_z, a draw from the filtering posterior;
`transition` (z, u, noise [B, W]) -> next_z, a draw from the prior's; `emit` (z) -> x, the mean frame's levels.
Zero noise gives the means: the filtered states of `encode`, the roll-out of `predict`.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.data.pendulum import MAX_TORQUE, SIDE, TEST_SEED, PendulumSplit, simulate

LEVELS = 256


@dataclass
class DVBFConfig:
    kind: str = "dvbf"  # or "vae-rnn": the baseline
    latent: int = 6  # D, the state
    noise: int = 0  # W, the process noise w_t (0: D)
    noise_scale: float = 0.0  # > 0: every entry of every C_i is bounded by it (C_i = noise_scale tanh(C'_i))
    hidden: int = 128
    matrices: int = 16  # M
    init_frames: int = 3  # K
    warmup_steps: int = 0  # linear KL warm-up (0: none)
    prediction_weight: float = 10.0  # vae-rnn: the weight of the GRU's squared error beside the VAE's ELBO


def mlp(*sizes: int) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = [m for a, b in zip(sizes, sizes[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*layers[:-1])


def intensity(x: torch.Tensor) -> torch.Tensor:
    """Levels 0..255 -> intensities in [0, 1], one flat vector per frame: [..., 1, 16, 16] -> [..., 256]."""
    return x.float().flatten(-3) / (LEVELS - 1)


def kl_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(0, I)), analytic, summed over the last axis: [..., D] -> [...]."""
    return 0.5 * (mean.square() + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(-1)


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(target | logits) of intensities in [0, 1], summed over the last axis: [..., P] -> [...]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


class Frames(nn.Module):
    """The frame encoder and decoder both models share: features [..., H] of a frame, logits [..., 256] of a state."""

    def __init__(self, c: DVBFConfig, pixels: int):
        super().__init__()
        self.encoder = nn.Sequential(mlp(pixels, c.hidden, c.hidden), nn.ReLU())
        self.decoder = mlp(c.latent, c.hidden, c.hidden, pixels)


class DVBF(nn.Module):
    def __init__(self, c: DVBFConfig, pixels: int, actions: int):
        super().__init__()
        self.config, d, w = c, c.latent, c.noise or c.latent
        self.frames = Frames(c, pixels)
        self.initial = mlp(c.init_frames * c.hidden, c.hidden, 2 * d)  # -> mean, log std of z_1
        self.noise_posterior = mlp(d + actions + c.hidden, c.hidden, 2 * w)  # -> mean, log std of w_t
        self.weights = mlp(d, c.hidden // 4, c.matrices)  # alpha's logits
        eye = torch.eye(d).expand(c.matrices, d, d)
        self.A = nn.Parameter(eye + 0.01 * torch.randn(c.matrices, d, d))  # [M, D, D]
        self.B = nn.Parameter(0.1 * torch.randn(c.matrices, d, actions))  # [M, D, U]
        self.C = nn.Parameter(0.1 * torch.randn(c.matrices, d, w))  # [M, D, W]
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def alpha(self, z: torch.Tensor) -> torch.Tensor:
        """The mixture weights of the M linear systems: z [B, D] -> alpha [B, M], rows summing to 1."""
        return torch.softmax(self.weights(z), -1)

    def noise_matrices(self) -> torch.Tensor:
        """C_i [M, D, W], bounded by noise_scale where it is set."""
        scale = self.config.noise_scale
        return scale * torch.tanh(self.C) if scale > 0 else self.C

    def transition(self, z: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """z_{t+1} = A z + B u + C w with the matrices mixed by alpha(z): z [B, D], u [B, U], w [B, W] -> [B, D]."""
        a = self.alpha(z)  # [B, M]
        return (torch.einsum("bm,mij,bj->bi", a, self.A, z) + torch.einsum("bm,mij,bj->bi", a, self.B, u)
                + torch.einsum("bm,mij,bj->bi", a, self.noise_matrices(), w))

    def initial_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_1 | x_1..x_K): first frames [B, K, 1, 16, 16] levels -> (mean, log std) [B, D] each."""
        features = self.frames.encoder(intensity(x))  # [B, K, H]
        return self.initial(features.flatten(1)).chunk(2, -1)

    def noise_posterior_of(self, z: torch.Tensor, u: torch.Tensor, features: torch.Tensor):
        """q(w_t | z_t, u_t, x_{t+1}): z [B, D], u [B, U], the next frame's features [B, H] -> (mean, log std)."""
        return self.noise_posterior(torch.cat([z, u, features], -1)).chunk(2, -1)

    def filter(self, x: torch.Tensor, u: torch.Tensor, initial: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reparameterized filter over a whole sequence: x [B, T, 1, 16, 16] levels, u [B, T, U], standard
        normal noise of z_1 [B, D] and of every w_t [B, T - 1, W] -> (states z [B, T, D], KL of q(z_1) and every
        q(w_t) against the prior [B])."""
        mean, log_std = self.initial_posterior(x[:, :self.config.init_frames])
        z = mean + log_std.exp() * initial
        kl, states = kl_normal(mean, log_std), [z]
        features = self.frames.encoder(intensity(x))  # [B, T, H]
        for t in range(x.shape[1] - 1):
            mean, log_std = self.noise_posterior_of(z, u[:, t], features[:, t + 1])
            z = self.transition(z, u[:, t], mean + log_std.exp() * noise[:, t])
            kl, states = kl + kl_normal(mean, log_std), states + [z]
        return torch.stack(states, 1), kl

    def noise(self, batch: int, steps: int, draw=torch.randn) -> tuple[torch.Tensor, torch.Tensor]:
        """The filter's noise for `steps` frames, from `draw` (torch.randn, or torch.zeros for the means):
        z_1's [B, D] and the w_t's [B, T - 1, W]."""
        return draw(batch, self.config.latent), draw(batch, steps - 1, self.C.shape[-1])

    def emit_logits(self, z: torch.Tensor) -> torch.Tensor:
        """p(x | z): z [..., D] -> Bernoulli logits of the intensities [..., 256]."""
        return self.frames.decoder(z)

    def beta(self) -> float:
        w = self.config.warmup_steps
        return 1.0 if w <= 0 else min(1.0, self.steps.item() / w)

    def loss(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The negative ELBO per sequence (the KL warmed up while training): x [B, T, 1, 16, 16], u [B, T, U]."""
        z, kl = self.filter(x, u, *self.noise(len(x), x.shape[1], torch.randn))
        reconstruction = bernoulli_nll(self.emit_logits(z), intensity(x)).sum(1)  # [B]
        if self.training:
            self.steps += 1
            return (reconstruction + self.beta() * kl).mean()
        return (reconstruction + kl).mean()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, u: torch.Tensor, horizon: int) -> torch.Tensor:
        """Filter the observed frames x [B, T, 1, 16, 16] (means), roll the mean state `horizon` steps under the
        actions u [B, T + horizon, U] -> intensities of the predicted frames [B, horizon, 256]."""
        z, _ = self.filter(x, u, *self.noise(len(x), x.shape[1], torch.zeros))
        z, out = z[:, -1], []
        for t in range(x.shape[1] - 1, x.shape[1] - 1 + horizon):
            z = self.transition(z, u[:, t], torch.zeros(len(z), self.C.shape[-1]))
            out.append(torch.sigmoid(self.emit_logits(z)))
        return torch.stack(out, 1)


class VAERNN(nn.Module):
    """The baseline: a per-frame VAE, and a GRU that predicts the next frame's latent mean from the past ones."""

    def __init__(self, c: DVBFConfig, pixels: int, actions: int):
        super().__init__()
        self.config = c
        self.frames = Frames(c, pixels)
        self.posterior = nn.Linear(c.hidden, 2 * c.latent)
        self.rnn = nn.GRUCell(c.latent + actions, c.hidden)
        self.next_latent = nn.Linear(c.hidden, c.latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_t | x_t): frames [..., 1, 16, 16] levels -> (mean, log std) [..., D]."""
        return self.posterior(self.frames.encoder(intensity(x))).chunk(2, -1)

    def loss(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Per sequence: the frames' negative ELBO plus prediction_weight x the GRU's squared error in
        predicting each next latent mean (its target held fixed)."""
        mean, log_std = self.encode(x)  # [B, T, D]
        z = mean + log_std.exp() * torch.randn_like(mean)
        elbo = (bernoulli_nll(self.frames.decoder(z), intensity(x)) + kl_normal(mean, log_std)).sum(1)  # [B]
        h, error = torch.zeros(x.shape[0], self.config.hidden), 0
        for t in range(x.shape[1] - 1):
            h = self.rnn(torch.cat([mean[:, t], u[:, t]], -1), h)
            error = error + (self.next_latent(h) - mean[:, t + 1].detach()).square().sum(-1)
        return (elbo + self.config.prediction_weight * error).mean()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, u: torch.Tensor, horizon: int) -> torch.Tensor:
        """As DVBF.predict: the GRU reads the observed frames' means, then its own predictions."""
        mean, _ = self.encode(x)
        h, out = torch.zeros(x.shape[0], self.config.hidden), []
        for t in range(x.shape[1]):
            h = self.rnn(torch.cat([mean[:, t], u[:, t]], -1), h)
        for t in range(x.shape[1], x.shape[1] + horizon):
            z = self.next_latent(h)
            out.append(torch.sigmoid(self.frames.decoder(z)))
            h = self.rnn(torch.cat([z, u[:, t]], -1), h)
        return torch.stack(out, 1)


def build(model_config: dict, split) -> nn.Module:
    if not isinstance(split, PendulumSplit):
        raise ValueError(f"dvbf needs sequences of frames and actions (a pendulum split), got {split.name}")
    c = DVBFConfig(**model_config)
    pixels, actions = int(np.prod(split.frame_shape)), split.y_train.shape[-1]
    return (VAERNN if c.kind == "vae-rnn" else DVBF)(c, pixels, actions)


def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The negative ELBO per sequence, in nats (the baseline: plus its weighted prediction error)."""
    return model.loss(x, y.float())


@torch.no_grad()
def sample_grid(model: nn.Module, generator: torch.Generator, n: int = 4, observed: int = 8,
                horizon: int = 8) -> torch.Tensor:
    """For n test sequences (the generator is unused: prediction is deterministic), rows of 8: the true frames
    after the `observed` ones, then the model's predictions of them: [2n * horizon, 1, 16, 16] levels."""
    x, u, _ = simulate(n, observed + horizon, TEST_SEED)
    predicted = model.eval().predict(torch.from_numpy(x[:, :observed]).long(), torch.from_numpy(u), horizon)
    predicted = torch.round(predicted * (LEVELS - 1)).long().view(n, horizon, 1, *x.shape[-2:])
    return torch.stack([torch.from_numpy(x[:, observed:]).long(), predicted], 1).flatten(0, 2)


# --- evaluation: what the latent holds, and how far ahead it predicts -------------------------------------------


@torch.no_grad()
def latents(model: nn.Module, x: np.ndarray, u: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Per frame [N, T, D]: the DVBF's filtered states (zero noise), the baseline's per-frame posterior means."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, ub = torch.from_numpy(x[i: i + batch_size]).long(), torch.from_numpy(u[i: i + batch_size])
        if isinstance(model, DVBF):
            out.append(model.filter(xb, ub, *model.noise(len(xb), xb.shape[1], torch.zeros))[0])
        else:
            out.append(model.encode(xb)[0])
    return torch.cat(out).numpy()


def state_r2(model: nn.Module, split: PendulumSplit, fit_sequences: int = 500) -> dict[str, float]:
    """R^2 on the test sequences of a linear regression (least squares) from the latent to the true state
    (cos theta, sin theta, omega), fitted on the first fit_sequences training sequences."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    d = model.config.latent
    z_fit = latents(model, split.x_train[:fit_sequences], split.y_train[:fit_sequences]).reshape(-1, d)
    regression = LinearRegression().fit(z_fit, split.states_train[:fit_sequences].reshape(-1, 3))
    z_test = latents(model, split.x_test, split.y_test).reshape(-1, d)
    predicted, true = regression.predict(z_test), split.states_test.reshape(-1, 3)
    return {f"r2_{name}": float(r2_score(true[:, k], predicted[:, k]))
            for k, name in enumerate(("cos_theta", "sin_theta", "omega"))}


@torch.no_grad()
def prediction_errors(model: nn.Module, split: PendulumSplit, observed: int = 8, horizon: int = 20) -> dict:
    """After `observed` test frames, the predicted frames' mean squared error per pixel (intensities in [0, 1])
    and Bernoulli cross-entropy per frame (nats), at each horizon 1..horizon: lists of `horizon` floats (fewer
    where the sequences are shorter)."""
    x = torch.from_numpy(split.x_test).long()
    observed = min(observed, x.shape[1] // 2)
    horizon = min(horizon, x.shape[1] - observed)
    predicted = model.eval().predict(x[:, :observed], torch.from_numpy(split.y_test), horizon)  # [N, H, 256]
    target = intensity(x[:, observed: observed + horizon])  # [N, H, 256]
    cross_entropy = F.binary_cross_entropy(predicted.clamp(1e-6, 1 - 1e-6), target, reduction="none").sum(-1)
    return {"mse_per_pixel": (predicted - target).square().mean((0, 2)).tolist(),
            "bce_per_frame_nats": cross_entropy.mean(0).tolist()}


@torch.no_grad()
def evaluate_test(model: nn.Module, split: PendulumSplit) -> dict:
    """The test loss (the DVBF's: the negative ELBO per sequence), the state's linear R^2 and the 20-step
    prediction errors after 8 observed frames."""
    x, u = torch.from_numpy(split.x_test).long(), torch.from_numpy(split.y_test)
    torch.manual_seed(0)
    return {"test_loss_per_sequence": float(model.eval().loss(x, u)), "kind": model.config.kind,
            **state_r2(model, split), **prediction_errors(model, split), "test_sequences": len(x),
            "steps": x.shape[1]}


# --- export: the functions of the state-space procedure --------------------------------------------------------


class FilterInit(nn.Module):
    """z_1 ~ q(z_1 | x_1..x_K): frames x [B, K, 1, 16, 16] levels, standard normal noise [B, D] -> z [B, D]."""

    def __init__(self, model: DVBF):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.model.initial_posterior(x)
        return mean + log_std.exp() * noise


class FilterStep(FilterInit):
    """z_{t+1} = transition(z_t, u_t, w_t), w_t ~ q(w_t | z_t, u_t, x_{t+1}): z [B, D], u [B, U], the next frame
    x [B, 1, 16, 16] levels, noise [B, W] -> next_z [B, D]."""

    def forward(self, z: torch.Tensor, u: torch.Tensor, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.model.noise_posterior_of(z, u, self.model.frames.encoder(intensity(x)))
        return self.model.transition(z, u, mean + log_std.exp() * noise)


class Transition(FilterInit):
    """z_{t+1} = transition(z_t, u_t, w_t) under the prior: z [B, D], u [B, U], w = noise [B, W] -> next_z."""

    def forward(self, z: torch.Tensor, u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.model.transition(z, u, noise)


class Emit(FilterInit):
    """The mean frame of p(x | z): z [B, D] -> x [B, 1, 16, 16] int64 levels."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.model.emit_logits(z))  # [B, 256]
        return torch.round(p * (LEVELS - 1)).long().view(-1, 1, SIDE, SIDE)


def data_spec(split: PendulumSplit) -> dict:
    """The manifest's `data`: one frame (the procedure's capability says how frames and actions make a sequence)."""
    return {"kind": "image", "shape": list(split.frame_shape), "levels": split.levels}


def exported_functions(model: DVBF, split: PendulumSplit) -> tuple[dict, dict]:
    """(functions, capabilities): see the module docstring. encode, predict and sample share one state_space
    entry; its `function` is the step each one repeats."""
    if not isinstance(model, DVBF):
        raise ValueError("the vae-rnn baseline is measured, not exported")
    c, model = model.config, model.eval()
    g = torch.Generator().manual_seed(0)
    z, u = torch.randn(2, c.latent, generator=g), torch.randn(2, split.y_train.shape[-1], generator=g)
    w = torch.randn(2, model.C.shape[-1], generator=g)
    frames = torch.from_numpy(split.x_test[:2]).long()  # [2, T, 1, 16, 16]
    functions = {
        "filter_init": (FilterInit(model), {"x": frames[:, :c.init_frames], "noise": torch.randn_like(z)}, ["z"]),
        "filter_step": (FilterStep(model), {"z": z, "u": u, "x": frames[:, 1], "noise": w}, ["next_z"]),
        "transition": (Transition(model), {"z": z, "u": u, "noise": w}, ["next_z"]),
        "emit": (Emit(model), {"z": z}, ["x"]),
    }
    state_space = {"procedure": "state_space", "function": "transition", "filter_init": "filter_init",
                   "filter_step": "filter_step", "emit": "emit", "init_frames": c.init_frames,
                   "actions": {"shape": [int(u.shape[1])], "low": -MAX_TORQUE, "high": MAX_TORQUE},
                   "max_steps": 128, "max_row_steps": 8192,
                   "noise": {"noise": {"distribution": "normal", "shape": [int(w.shape[1])]}},
                   "initial_noise": {"noise": {"distribution": "normal", "shape": [c.latent]}}}
    return functions, {"encode": {**state_space, "function": "filter_step"}, "predict": state_space,
                       "sample": state_space}

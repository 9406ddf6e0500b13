"""VRNN: a recurrent latent variable model on raw speech frames, conditioned on the voice (Chung et al. 2015,
"A Recurrent Latent Variable Model for Sequential Data"), and its baseline, the same RNN without latents.

A 0.5 s segment of T * F mu-law codes (F = `frame` samples per frame) is T frames x_1..x_T. Each frame's
network input is its codes as companded amplitudes 2 q / 255 - 1 in [-1, 1]. With h_0 = 0 and the voice's
embedding v:
    prior      p(z_t | h_{t-1})       = N(mu_0, diag sigma_0^2)(h_{t-1})                       [Dz]
    posterior  q(z_t | x_t, h_{t-1})  = N(mu_q, diag sigma_q^2)(phi_x(x_t), h_{t-1})             [Dz]
    decoder    p(x_t | z_t, h_{t-1})  = prod_f DLM(x_tf; params(phi_z(z_t), h_{t-1})_f)            [F codes]
    recurrence h_t = GRU([phi_x(x_t); phi_z(z_t); v], h_{t-1})                                  [H]
DLM is the discretized logistic mixture over the 256 mu-law codes (training/distributions/logistic_mixture.py,
whose bin centres are the codes' companded values), so every likelihood here is a probability of the codes:
nats per sample in the same discrete units as WaveNet's categorical. The samples of a frame are independent
given (z_t, h_{t-1}), as in the paper; the latent is what couples them.
With `latent: 0` the model is the baseline RNN: p(x_t | h_{t-1}) = DLM(params(h_{t-1})), h_t = GRU([phi_x(x_t);
v], h_{t-1}), and its log-likelihood is exact.
Bounds (nats per segment), with the KL terms analytic:
    ELBO(x | v)   = sum_t E_q[log p(x_t | z_t, h_{t-1}) - KL(q(z_t | x_t, h_{t-1}) || p(z_t | h_{t-1}))]
    IWAE_k(x | v) = log (1/k) sum_i prod_t p(x_t, z_t^i | h_{t-1}^i) / q(z_t^i | x_t, h_{t-1}^i)
The served `log_weight(x, eps)` takes no voice: it is log sum_v p(v) w_v, each voice's weight w_v under the
same eps, an unbiased estimate of p(x) = sum_v p(v) p(x | v), so the served bounds are of the marginal.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from training.distributions import gaussian, logistic_mixture
from training.families.hvae import gaussian_kl
from training.families.vae import log_mean_exp

MAX_K = 256  # the most importance samples a score request may ask for


@dataclass
class VRNNConfig:
    levels: int = 256
    num_classes: int = 4  # voices
    frame: int = 200  # F: samples per frame
    hidden: int = 192  # H: the GRU's state
    features: int = 128  # E: width of phi_x, phi_z and every MLP's hidden layer
    latent: int = 16  # Dz; 0: the baseline RNN
    voice: int = 8  # V: the voice embedding
    mixtures: int = 2  # K: logistic components per sample
    served_k: int = 8  # the served default IWAE k (and the anomaly calibration's)
    eval_k: int = 64  # the reported test bound's k

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(n_in: int, width: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, n_out))


class VRNN(nn.Module):
    def __init__(self, config: VRNNConfig):
        super().__init__()
        self.config = c = config
        e, h, d = c.features, c.hidden, c.latent
        self.voice = nn.Embedding(c.num_classes, c.voice)
        self.phi_x = nn.Sequential(mlp(c.frame, e, e), nn.ReLU())
        self.decoder = mlp(h + (e if d else 0), e, c.frame * 3 * c.mixtures)
        self.cell = nn.GRUCell(e + (e if d else 0) + c.voice, h)
        if d:
            self.phi_z = nn.Sequential(nn.Linear(d, e), nn.ReLU())
            self.prior = mlp(h, e, 2 * d)
            self.encoder = mlp(e + h, e, 2 * d)

    @property
    def dtype(self) -> torch.dtype:
        return self.cell.weight_hh.dtype

    def amplitudes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [...] -> companded amplitudes in [-1, 1], the DLM's bin centres."""
        return x.to(self.dtype) * (2 / (self.config.levels - 1)) - 1

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [B, T * F] -> [B, T, F]."""
        return x.reshape(x.shape[0], -1, self.config.frame)

    def output(self, h: torch.Tensor, z_features: torch.Tensor | None) -> torch.Tensor:
        """h [..., H], phi_z(z) [..., E] (None: the baseline) -> DLM params per sample [..., F, 3K]."""
        inputs = h if z_features is None else torch.cat([h, z_features], dim=-1)
        return self.decoder(inputs).unflatten(-1, (self.config.frame, 3 * self.config.mixtures))

    def frame_log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params [..., F, 3K], codes x [..., F] -> log p(frame) [...]."""
        return logistic_mixture.log_prob(params, x, self.config.levels).sum(-1)

    def recur(self, h, x_features, z_features, v) -> torch.Tensor:
        """h_{t-1} [..., H], phi_x(x_t) [..., E], phi_z(z_t) [..., E] or None, v [..., V] -> h_t [..., H]."""
        parts = [x_features] + ([] if z_features is None else [z_features]) + [v]
        inputs = torch.cat(parts, dim=-1)
        return self.cell(inputs.reshape(-1, inputs.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)

    def moments(self, net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A Gaussian's (mean, log_var) [..., Dz] from an MLP's output."""
        return net(inputs).chunk(2, dim=-1)

    def filter(self, x: torch.Tensor, label: torch.Tensor, eps: torch.Tensor | None):
        """The recurrence over x [B, T*F] given label [B], with z_t = posterior mean + std * eps [..., B, T, Dz]
        (None: z_t = the posterior mean). Yields per frame t: (log p(x_t | z_t, h), log q(z_t), log p(z_t | h),
        analytic KL, q's (mean, log_var)), each [..., B] or [..., B, Dz]; the baseline yields (log p(x_t | h),)."""
        x = self.frames(x)  # [B, T, F]
        shape = (x.shape[0],) if eps is None else eps.shape[:-2]  # [..., B]
        h = torch.zeros(*shape, self.config.hidden, dtype=self.dtype)
        v = self.voice(label).expand(*shape, -1)
        features = self.phi_x(self.amplitudes(x))  # [B, T, E]
        for t in range(x.shape[1]):
            xt, ft = x[:, t].expand(*shape, -1), features[:, t].expand(*shape, -1)
            if not self.config.latent:
                yield (self.frame_log_prob(self.output(h, None), xt),)
                h = self.recur(h, ft, None, v)
                continue
            prior_mean, prior_log_var = self.moments(self.prior, h)
            mean, log_var = self.moments(self.encoder, torch.cat([ft, h], dim=-1))
            z = mean if eps is None else mean + torch.exp(0.5 * log_var) * eps[..., t, :]
            zf = self.phi_z(z)
            log_q = gaussian.log_prob(mean, 0.5 * log_var, z).sum(-1)
            log_p = gaussian.log_prob(prior_mean, 0.5 * prior_log_var, z).sum(-1)
            kl = gaussian_kl(mean, log_var, prior_mean, prior_log_var).sum(-1)
            yield self.frame_log_prob(self.output(h, zf), xt), log_q, log_p, kl, (mean, log_var)
            h = self.recur(h, ft, zf, v)

    def log_prob(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The baseline's exact log p(x | voice): x [B, T*F] codes, label [B] -> [B] nats."""
        if self.config.latent:
            raise ValueError("a VRNN has no exact likelihood: use elbo or log_weights")
        return sum(terms[0] for terms in self.filter(x, label, None))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The baseline's exported `log_prob`."""
        return self.log_prob(x, label)


def elbo(model: VRNN, x: torch.Tensor, label: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ELBO(x | voice) with one z sequence per row (eps [B, T, Dz]) and analytic KLs -> [B] nats."""
    return sum(log_px - kl for log_px, _, _, kl, _ in model.filter(x, label, eps))


def log_weights(model: VRNN, x: torch.Tensor, label: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z | voice) - log q(z | x, voice) at z of eps [..., B, T, Dz]: x [B, T*F], label [B] -> [..., B]."""
    return sum(log_px + log_p - log_q for log_px, log_q, log_p, _, _ in model.filter(x, label, eps))


def marginal_log_weights(model: VRNN, x: torch.Tensor, eps: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """log sum_v p(v) w_v(x, eps), every voice's weight under the same eps [B, T, Dz] -> [B]: an unbiased
    estimate of p(x) (each w_v is one of p(x | v)), so its log-mean-exp over k draws bounds log p(x)."""
    voices = len(log_prior)
    log_w = log_weights(model, x.repeat(voices, 1), every_voice(x, voices), eps.repeat(voices, 1, 1))  # [C * B]
    return torch.logsumexp(log_w.view(voices, -1) + log_prior[:, None], dim=0)


def every_voice(x: torch.Tensor, voices: int) -> torch.Tensor:
    """The labels of x [B, ...] repeated once per voice, voice-major: [C * B] (0 B times, then 1, ...)."""
    return torch.arange(voices)[:, None].expand(voices, x.shape[0]).reshape(-1)


def voice_log_prior(split, voices: int) -> torch.Tensor:
    """log p(v), the voices' frequencies among the training segments: [C]."""
    return torch.log(torch.bincount(torch.from_numpy(split.y_train), minlength=voices) / len(split.y_train))


def draw_eps(model: VRNN, shape: tuple, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise [*shape, T, Dz] in the model's dtype."""
    return torch.randn(*shape, frames, model.config.latent, generator=generator, dtype=model.dtype)


def loss(model: VRNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean -ELBO (the baseline: exact NLL) in nats per segment, given the voice y."""
    if not model.config.latent:
        return -model.log_prob(x, y).mean()
    return -elbo(model, x, y, draw_eps(model, (len(x),), x.shape[1] // model.config.frame)).mean()


@torch.no_grad()
def evaluate_test(model: VRNN, split, batch: int = 8) -> dict:
    """Test figures given the voice, as WaveNet's are: the baseline's exact NLL, or the VRNN's -ELBO and -IWAE_k
    for k = eval_k (the reported bound), all in nats per segment and per sample. Per example (the anomaly
    calibration): the served score, the marginal -IWAE_served_k over voices, from seed 0."""
    model.eval()
    n, size = len(split.x_test), split.x_test.shape[1]
    if not model.config.latent:
        nll = torch.cat([-model.log_prob(torch.from_numpy(split.x_test[i: i + batch]).long(),
                                         torch.from_numpy(split.y_test[i: i + batch]))
                         for i in range(0, n, batch)]).double()
        return {"test_nll_per_example": nll.tolist(), "method": "exact",
                "test_nats_per_sample": nll.mean().item() / size}
    generator, frames = torch.Generator().manual_seed(0), size // model.config.frame
    served_k, eval_k = model.config.served_k, model.config.eval_k
    log_prior = voice_log_prior(split, model.config.num_classes).to(model.dtype)
    served, sums = [], {"elbo": 0.0, "iwae": 0.0, "stderr2": 0.0}
    for i in tqdm(range(0, n, batch), desc=f"IWAE-{eval_k} of the test set", leave=False):
        x, y = torch.from_numpy(split.x_test[i: i + batch]).long(), torch.from_numpy(split.y_test[i: i + batch])
        log_w = torch.cat([log_weights(model, x, y, e) for e in draw_eps(model, (eval_k, len(x)), frames,
                                                                         generator).split(16)]).double()  # [k, B]
        bound, stderr = log_mean_exp(log_w)
        sums["elbo"] -= log_w.mean(0).sum().item()
        sums["iwae"] -= bound.sum().item()
        sums["stderr2"] += stderr.square().sum().item()
        eps = draw_eps(model, (served_k, len(x)), frames, generator)
        served.append(-log_mean_exp(torch.stack([marginal_log_weights(model, x, e, log_prior) for e in eps]))[0])
    elbo_nats, iwae_nats = sums["elbo"] / n, sums["iwae"] / n
    return {"test_nll_per_example": torch.cat(served).double().tolist(), "method": "iwae", "k": served_k,
            "served_k": served_k, "eval_k": eval_k, "test_elbo_nats": elbo_nats, "test_iwae_eval_k_nats": iwae_nats,
            "test_iwae_eval_k_stderr_of_estimate": math.sqrt(sums["stderr2"]) / n,
            "test_elbo_nats_per_sample": elbo_nats / size, "test_iwae_eval_k_nats_per_sample": iwae_nats / size}


def build(model_config: dict, split) -> VRNN:
    """A VRNN (or, with latent 0, the baseline RNN) over `split`'s mu-law codes and voices."""
    model = VRNN(VRNNConfig(levels=split.levels, num_classes=split.num_classes, **model_config))
    if split.shape[0] % model.config.frame:
        raise ValueError(f"segments of {split.shape[0]} samples are not whole frames of {model.config.frame}")
    return model


def box_muller(u: torch.Tensor) -> torch.Tensor:
    """Uniforms [..., 2] in [0, 1) -> standard normals [...] (Box and Muller 1958; exports to ONNX)."""
    radius = torch.sqrt(-2 * torch.log(u[..., 0].clamp(min=torch.finfo(u.dtype).tiny)))
    return radius * torch.cos(2 * math.pi * u[..., 1])


class Step(nn.Module):
    """One frame per call, the autoregressive procedure's step: state h [B, H].

    noise [B, F + Dz, 2] uniform: rows :F draw the frame's samples (the DLM's component and logistic), rows F:
    z's standard normals by Box-Muller. z ~ p(z | h) with its std scaled by temperature, x ~ p(x | z, h); where
    mask is 1 the frame takes `observed`, and a wholly observed frame (a prompt) draws z from q(z | x, h) instead,
    so that the state filters the prompt."""

    def __init__(self, model: VRNN):
        super().__init__()
        self.model = model

    def forward(self, h, noise, temperature, label, observed, mask):
        m, f = self.model, self.model.config.frame
        t = temperature[:, None]  # [B, 1]
        zf = None
        if m.config.latent:
            eps = box_muller(noise[:, f:])  # [B, Dz]
            prior_mean, prior_log_var = m.moments(m.prior, h)
            z = prior_mean + t * torch.exp(0.5 * prior_log_var) * eps
            known = (mask > 0).all(dim=1, keepdim=True)  # [B, 1]
            mean, log_var = m.moments(m.encoder, torch.cat([m.phi_x(m.amplitudes(observed)), h], dim=-1))
            z = torch.where(known, mean + torch.exp(0.5 * log_var) * eps, z)
            zf = m.phi_z(z)
        drawn = logistic_mixture.sample(m.output(h, zf), noise[:, :f], t, m.config.levels)  # [B, F]
        x = torch.where(mask > 0, observed, drawn)
        return x, m.recur(h, m.phi_x(m.amplitudes(x)), zf, m.voice(label))

    def noise_shape(self) -> list[int]:
        return [self.model.config.frame + self.model.config.latent, 2]


@torch.no_grad()
def sample(model: VRNN, label: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """label [B], noise [B, T, F + Dz, 2] uniform, temperature [B] -> codes [B, T * F] int64, one Step per frame."""
    step, h = Step(model), torch.zeros(len(label), model.config.hidden, dtype=model.dtype)
    empty = torch.zeros(len(label), model.config.frame, dtype=torch.long)
    frames = []
    for t in range(noise.shape[1]):
        x, h = step(h, noise[:, t], temperature, label, empty, empty)
        frames.append(x)
    return torch.cat(frames, dim=1)


def sample_audio(model: VRNN, generator: torch.Generator, seconds: float = 1.0) -> torch.Tensor:
    """One clip of about `seconds` per voice, at temperature 1: codes [num_classes, T] int64."""
    from training.data.speech import SAMPLE_RATE

    c = model.config
    frames = max(1, round(seconds * SAMPLE_RATE / c.frame))
    label = torch.arange(c.num_classes)
    noise = torch.rand(len(label), frames, *Step(model).noise_shape(), generator=generator, dtype=model.dtype)
    return sample(model, label, noise, torch.ones(len(label), dtype=model.dtype))


class LogWeight(nn.Module):
    """The served `log_weight`: the voice-marginal weight (marginal_log_weights) under the training voice prior."""

    def __init__(self, model: VRNN, log_prior: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("log_prior", log_prior.to(model.dtype))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x [B, T*F] codes, eps [B, T, Dz] -> [B]."""
        return marginal_log_weights(self.model, x.long(), eps, self.log_prior)


class Encode(nn.Module):
    """Filtering: q(z_t | x_t, h_{t-1})'s mean and std per frame, the state carried along the posterior means.

    The service's encode takes no voice, so the filter runs under every voice and keeps, per input, the voice of
    the highest log p(v) + sum_t [log p(x_t | z_t, h_{t-1}) - KL_t] at z_t = the posterior means."""

    def __init__(self, model: VRNN, log_prior: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("log_prior", log_prior.to(model.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T*F] codes -> (mean, std) [B, T, Dz]."""
        voices = len(self.log_prior)
        terms = list(self.model.filter(x.long().repeat(voices, 1), every_voice(x, voices), None))
        fit = sum(log_px - kl for log_px, _, _, kl, _ in terms).view(voices, -1) + self.log_prior[:, None]  # [C, B]
        mean, log_var = (torch.stack(m, dim=1) for m in zip(*[t[-1] for t in terms], strict=True))  # [C * B, T, Dz]
        best = (torch.arange(voices)[:, None] == fit.argmax(0)).to(mean.dtype)  # [C, B]: one-hot, the best voice
        picked = [(moment.view(voices, -1, *moment.shape[1:]) * best[..., None, None]).sum(0) for moment in
                  (mean, log_var)]  # [B, T, Dz] each
        return picked[0], torch.exp(0.5 * picked[1])


def exported_functions(model: VRNN, split) -> tuple[dict, dict]:
    """(functions, capabilities): every function is (module, example inputs, output names). A VRNN is sampled
    frame by frame (autoregressive), scored by importance sampling (log_weight) and encoded by filtering; the
    baseline is sampled the same way and scored exactly (log_prob). A request defaults to one second."""
    c, b = model.config, 2
    step, frames = Step(model), split.shape[0] // c.frame
    x, label, frame = torch.full((b, split.shape[0]), 128, dtype=torch.long), torch.zeros(b, dtype=torch.long), \
        torch.zeros(b, c.frame, dtype=torch.long)
    functions = {"sample_step": (step, {
        "h": torch.zeros(b, c.hidden), "noise": torch.rand(b, *step.noise_shape()), "temperature": torch.ones(b),
        "label": label, "observed": frame, "mask": frame}, ["x", "next_h"])}
    autoregressive = {"procedure": "autoregressive", "function": "sample_step",
                      "steps": max(1, split.sample_rate // c.frame), "step_shape": [c.frame],
                      "noise_shape": step.noise_shape(), "state": {"h": {"dtype": "float32", "shape": [c.hidden]}},
                      "x_prev_init": 128}
    capabilities = {"sample": autoregressive, "complete": autoregressive, "stream": autoregressive}
    if not c.latent:
        functions["log_prob"] = (model, {"x": x, "label": label}, ["log_prob"])
        return functions, capabilities | {"score": {"procedure": "direct", "function": "log_prob", "method": "exact"}}
    log_prior = voice_log_prior(split, c.num_classes)
    functions["log_weight"] = (LogWeight(model, log_prior), {"x": x, "eps": torch.zeros(b, frames, c.latent)},
                               ["log_weight"])
    functions["encode"] = (Encode(model, log_prior), {"x": x}, ["mean", "std"])
    eps = {"distribution": "normal", "shape": [frames, c.latent]}
    return functions, capabilities | {
        "score": {"procedure": "importance", "function": "log_weight", "methods": ["iwae", "elbo"], "method": "iwae",
                  "k": c.served_k, "max_k": MAX_K, "noise": {"eps": eps}},
        "encode": {"procedure": "direct", "function": "encode"},
    }

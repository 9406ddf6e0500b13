"""WaveNet: gated dilated causal convolutions over mu-law audio, conditioned on the voice
(van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio").

p(x | voice) = prod_t p(x_t | x_<t, voice) over codes 0..255. The network's input at time t is the
code of sample t-1, and START = 128 (mu-law zero, silence) at t = 0; before that every layer's input
is zero (causal zero padding). So sample t is predicted from samples < t only, the receptive field
being 1 + sum(dilations) samples.

Network (R residual channels, S skip channels; dilations 1, 2, ..., 2^(layers-1), `stacks` times):
    h_0(t) = embedding(input code at t)                                       [R]
    z_l(t) = W_l [h_{l-1}(t - d_l); h_{l-1}(t)] + b_l + c_l(voice)             [2R]
    g_l(t) = tanh(z_l first half) * sigmoid(z_l second half)                   [R]
    h_l(t) = h_{l-1}(t) + U_l g_l(t)      (no residual after the last layer)
    params(t) = head(skip [g_1; ...; g_L](t)), head = relu -> linear -> relu -> linear
c_l(voice) is global conditioning: a learned embedding of the voice id added into every gate.
The skip path is one linear map of all the gates stacked, i.e. the sum of one per layer. params are
256 logits (`output: "categorical"`, the default) or the discretized logistic mixture's 3K
(`output: "logistic_mixture"`, two uniforms per sample).

Fast generation (Paine et al. 2016, "Fast Wavenet Generation Algorithm"): `Step` generates
K = `chunk` samples per call, so a sample costs O(layers), not O(receptive field). Layer l queues
its last d_l inputs h_{l-1}; its dilated conv is one matmul of [oldest queued input; current input].
The queues of all layers are ONE state tensor, `queue` [B, sum(dilations), R]: layer l's d_l rows,
oldest first, after those of layers < l. The samples are unrolled when the step is traced: within a
call, inputs newer than the queue are read straight off the call's own earlier samples, and each
layer's queue is rebuilt once per call. ONNX gets a Loop over chunks of ONNX_CHUNK unrolled samples
(it loads in a fraction of a second), TorchScript a scripted loop over one traced sample, and the
service's fused kernel `dilated_gated_stack` the weights (`fused_kernel`).
Where mask is 1 the step emits `observed` and conditions on it (completion, a prompt).
`sample_fast` equals `sample_naive` (the whole model on the whole prefix per sample) under the same noise.
"""

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.families.raster import OUTPUTS
from training.onnx_loop import loop_step

START = 128  # the input before the first sample: mu-law zero
ONNX_CHUNK = 20  # samples unrolled per iteration of the exported ONNX step's Loop


@dataclass
class WaveNetConfig:
    levels: int = 256
    num_classes: int = 4  # voices
    residual: int = 32
    skip: int = 64
    layers: int = 10  # per stack: dilations 1, 2, ..., 2^(layers-1)
    stacks: int = 1
    chunk: int = 400  # samples per sample_step call (K)
    output: str = "categorical"  # or "logistic_mixture"
    mixtures: int = 10  # components of the logistic mixture

    @property
    def dilations(self) -> list[int]:
        return [2 ** i for i in range(self.layers)] * self.stacks

    @property
    def receptive_field(self) -> int:
        return 1 + sum(self.dilations)

    def to_dict(self) -> dict:
        return asdict(self)


def gate(z: torch.Tensor, channels: int, dim: int) -> torch.Tensor:
    """tanh(first half) * sigmoid(second half) of z's `dim` (2 * channels wide)."""
    a, b = z.split([channels, channels], dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig):
        super().__init__()
        if config.output not in OUTPUTS:
            raise ValueError(f"model.output: {config.output!r} is not one of {sorted(OUTPUTS)}")
        self.config, self.output = config, OUTPUTS[config.output](config)
        c = config
        r, n = c.residual, len(c.dilations)
        self.embedding = nn.Embedding(c.levels, r)
        self.voice = nn.Embedding(c.num_classes, n * 2 * r)  # every layer's gate bias, by voice
        self.dilated = nn.ModuleList(nn.Conv1d(r, 2 * r, 2, dilation=d) for d in c.dilations)
        self.residual = nn.ModuleList(nn.Conv1d(r, r, 1, bias=False) for _ in range(n - 1))
        self.skip = nn.Linear(n * r, c.skip)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(c.skip, c.skip), nn.ReLU(),
                                  nn.Linear(c.skip, self.output.channels))

    def conditioning(self, label: torch.Tensor) -> torch.Tensor:
        """label [B] -> each layer's gate bias c_l(voice) [B, L, 2R]."""
        return self.voice(label).view(-1, len(self.config.dilations), 2 * self.config.residual)

    def shift(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Embedded samples e [B, T, R] -> the network's inputs [B, T, R]: START, e_0, ..., e_{T-2}."""
        start = self.embedding(torch.full_like(x[:, :1], START))  # [B, 1, R], batch-size agnostic for export
        return torch.cat([start, e[:, :-1]], dim=1)

    def readout(self, inputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Network inputs [B, T, R], label [B] -> each sample's distribution parameters [B, T, channels]."""
        h, cond, gates = inputs.transpose(1, 2), self.conditioning(label), []  # h [B, R, T]
        for i, (conv, d) in enumerate(zip(self.dilated, self.config.dilations, strict=True)):
            g = gate(conv(F.pad(h, (d, 0))) + cond[:, i, :, None], self.config.residual, dim=1)  # [B, R, T]
            gates.append(g)
            if i < len(self.residual):
                h = h + self.residual[i](g)
        return self.head(self.skip(torch.cat(gates, dim=1).transpose(1, 2)))

    def params(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, T] codes, label [B] -> [B, T, channels]; position t sees x[:, :t] only."""
        x = x.long()
        return self.readout(self.shift(self.embedding(x), x), label)

    def log_prob(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """log p(x | voice) in nats: x [B, T] codes, label [B] -> [B]."""
        return self.output.log_prob(self.params(x, label), x.long()).sum(dim=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The exported `log_prob`."""
        return self.log_prob(x, label)


def loss(model: WaveNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in nats per sequence, given the voice y."""
    return -model.log_prob(x, y).mean()


class Step(nn.Module):
    """K = config.chunk samples per call; every layer's input queue in one state tensor queue [B, sum(d), R]."""

    def __init__(self, model: WaveNet):
        super().__init__()
        self.model = model

    def state_shapes(self) -> dict[str, list[int]]:
        c = self.model.config
        return {"queue": [sum(c.dilations), c.residual]}

    def onnx_export(self, path: Path, args: tuple, **options) -> None:
        """This step for ONNX, given example inputs: a Loop over chunks of at most ONNX_CHUNK samples, each chunk
        unrolled (training/onnx_loop.py). The same operations in the same order, so the same outputs; but 400
        unrolled samples (44,000 graph nodes) take onnxruntime about 10 s to load, the loop under half a second."""
        k_len = args[0].shape[1]
        chunk = max(c for c in range(1, min(k_len, ONNX_CHUNK) + 1) if k_len % c == 0)
        if chunk == k_len:
            torch.onnx.export(self, args, str(path), **options)
            return
        x_prev, queue, noise, temperature, label, observed, mask = args
        part = (x_prev[:, -chunk:], queue, noise[:, :chunk], temperature, label, observed[:, :chunk], mask[:, :chunk])
        with tempfile.TemporaryDirectory() as folder:
            torch.onnx.export(self, part, str(Path(folder) / "chunk.onnx"), **options)
            loop_step(Path(folder) / "chunk.onnx", path, k_len, chunk, ["noise", "observed", "mask"],
                      {"x_prev": "x", "queue": "next_queue"}, options.get("opset_version", 17))

    def fused_kernel(self) -> tuple[str, dict[str, torch.Tensor]] | None:
        """This step as the service's kernel `dilated_gated_stack` (categorical output only): (kind, weights)."""
        if self.model.config.output != "categorical":
            return None
        return "dilated_gated_stack", kernel_weights(self.model)

    def matrices(self, label: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per layer: the 2-tap conv as [old; new] [B, 2R] -> [B, 2R] (weight [2R, 2R], bias with the voice's
        [B, 2R]) and the residual weight [R, R] (None for the last layer), all for right-multiplication."""
        m, r = self.model, self.model.config.residual
        cond = m.conditioning(label)  # [B, L, 2R]
        residuals = [conv.weight[:, :, 0].t() for conv in m.residual] + [None]
        return [(conv.weight.permute(2, 1, 0).reshape(2 * r, 2 * r), conv.bias + cond[:, i], residual)
                for i, (conv, residual) in enumerate(zip(m.dilated, residuals, strict=True))]

    def sample_one(self, x, olds, layers, u, temperature, keep, value) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One sample: x [B] the previous one, olds L of [B, R] (each layer's input d samples ago), layers from
        matrices(), u [B, *noise_shape], temperature [B], keep [B] bool, value [B]
        -> (the sample [B] int64: value where keep, else drawn; each layer's input now, L of [B, R])."""
        m, h, gates, inputs = self.model, self.model.embedding(x), [], []  # h [B, R]
        for (weight, bias, residual), old in zip(layers, olds, strict=True):
            inputs.append(h)
            g = gate(torch.addmm(bias, torch.cat([old, h], dim=1), weight), m.config.residual, dim=1)  # [B, R]
            gates.append(g)
            if residual is not None:
                h = torch.addmm(h, g, residual)
        params = m.head(m.skip(torch.cat(gates, dim=1)))  # [B, channels]
        return torch.where(keep, value, m.output.sample(params, u, temperature)), inputs

    def forward(self, x_prev, queue, noise, temperature, label, observed, mask):
        """x_prev, observed, mask [B, K] int64 (x_prev[:, -1] is the previous sample; START at the first call),
        queue [B, sum(d), R], noise [B, K, *noise_shape] uniform, temperature [B], label [B] int64
        -> (x [B, K] int64, next_queue [B, sum(d), R])."""
        dilations, layers = self.model.config.dilations, self.matrices(label)
        queues = queue.split(dilations, dim=1)  # L of [B, d, R]
        history: list[list[torch.Tensor]] = [[] for _ in dilations]  # each layer's inputs in this call
        us, keep, values = noise.unbind(1), (mask > 0).unbind(1), observed.unbind(1)
        x, samples = x_prev[:, -1], []
        for k in range(x_prev.shape[1]):
            olds = [q[:, k] if k < d else past[k - d] for q, past, d in zip(queues, history, dilations, strict=True)]
            x, inputs = self.sample_one(x, olds, layers, us[k], temperature, keep[k], values[k])
            samples.append(x)
            for past, h in zip(history, inputs, strict=True):
                past.append(h)
        next_queues = [requeue(q, past) for q, past in zip(queues, history, strict=True)]
        return torch.stack(samples, dim=1), torch.cat(next_queues, dim=1)

    def torchscript(self, inputs: tuple) -> torch.jit.ScriptModule:
        """This step for TorchScript, given example inputs: a scripted loop over the K samples around one traced
        sample. (A traced chunk of K unrolled samples is correct, but TorchScript's graph optimizer, which runs on
        the second call, takes time superlinear in the graph's length: minutes for K = 50.)"""
        x_prev, queue, noise, temperature, label, observed, mask = inputs
        olds = queue[:, : len(self.model.config.dilations)]  # any [B, L, R]
        one = torch.jit.trace(OneSample(self), (x_prev[:, -1], olds, label, noise[:, 0], temperature, mask[:, 0] > 0,
                                                observed[:, 0]), check_trace=False)
        return torch.jit.script(ScriptedStep(one, self.model.config.dilations))


class OneSample(nn.Module):
    """Step.sample_one with the layers' tensors stacked, traced inside ScriptedStep."""

    def __init__(self, step: Step):
        super().__init__()
        self.step = step

    def forward(self, x, olds, label, u, temperature, keep, value):
        """olds [B, L, R] -> (x [B] int64, each layer's input now [B, L, R])."""
        x, inputs = self.step.sample_one(x, olds.unbind(1), self.step.matrices(label), u, temperature, keep, value)
        return x, torch.stack(inputs, dim=1)


class ScriptedStep(nn.Module):
    """Step's TorchScript form: the same inputs and outputs, a loop over the K samples. Each layer's queue lives in
    a ring [B, L, W + K, R] (W = the widest dilation): layer l's d_l queued inputs right-aligned before column W,
    and the input at sample k written in place at column W + k, so sample k reads column W - d_l + k."""

    dilations: list[int]

    def __init__(self, one: torch.jit.ScriptModule, dilations: list[int]):
        super().__init__()
        self.one, self.dilations = one, dilations

    def forward(self, x_prev, queue, noise, temperature, label, observed, mask):
        n, w, k_len = len(self.dilations), max(self.dilations), x_prev.size(1)
        ring = queue.new_zeros([queue.size(0), n, w + k_len, queue.size(2)])
        start = 0
        for i, d in enumerate(self.dilations):
            ring[:, i, w - d: w] = queue[:, start: start + d]
            start += d
        layer = torch.arange(n)
        oldest = torch.tensor([w - d for d in self.dilations])  # [L]
        x, samples, keep = x_prev[:, -1], [], mask > 0
        for k in range(k_len):
            x, inputs = self.one(x, ring[:, layer, oldest + k], label, noise[:, k], temperature, keep[:, k],
                                 observed[:, k])
            ring[:, :, w + k] = inputs
            samples.append(x)
        next_queue = [ring[:, i, w + k_len - d: w + k_len] for i, d in enumerate(self.dilations)]
        return torch.stack(samples, dim=1), torch.cat(next_queue, dim=1)


def kernel_weights(model: WaveNet) -> dict[str, torch.Tensor]:
    """Step's weights for the service's fused kernel `dilated_gated_stack` (categorical output only), every matrix
    [in, out] for right-multiplication as in Step.matrices, the voice folded into the gate bias [C, L, 2R]."""
    m, r = model, model.config.residual
    if m.config.output != "categorical":
        raise ValueError(f"the fused kernel draws from a categorical output, not {m.config.output!r}")
    with torch.no_grad():
        voices = m.conditioning(torch.arange(m.config.num_classes))  # [C, L, 2R]
        weights = {
            "embedding": m.embedding.weight,  # [levels, R]
            "dilations": torch.tensor(m.config.dilations, dtype=torch.long),
            "gate_weight": torch.stack([conv.weight.permute(2, 1, 0).reshape(2 * r, 2 * r) for conv in m.dilated]),
            "gate_bias": voices + torch.stack([conv.bias for conv in m.dilated]),
            "residual_weight": torch.stack([conv.weight[:, :, 0].t() for conv in m.residual]),  # [L-1, R, R]
            "skip_weight": m.skip.weight.t(), "skip_bias": m.skip.bias,
            "hidden_weight": m.head[1].weight.t(), "hidden_bias": m.head[1].bias,
            "output_weight": m.head[3].weight.t(), "output_bias": m.head[3].bias,
        }
        return {name: w.detach().float().contiguous() if w.is_floating_point() else w for name, w in weights.items()}


def requeue(queue: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
    """A layer's queue [B, d, R] after a call whose K inputs were `past` (K of [B, R]): its last d inputs."""
    d = queue.shape[1]
    if len(past) >= d:
        return torch.stack(past[-d:], dim=1)
    return torch.cat([queue[:, len(past):], torch.stack(past, dim=1)], dim=1)


def initial_state(step: Step, batch: int) -> dict[str, torch.Tensor]:
    """Zero queues for `batch` rows, in the model's dtype."""
    dtype = step.model.skip.weight.dtype
    return {name: torch.zeros([batch] + shape, dtype=dtype) for name, shape in step.state_shapes().items()}


def _defaults(noise, observed, mask):
    observed = torch.zeros(noise.shape[:2], dtype=torch.long) if observed is None else observed
    return observed, torch.zeros_like(observed) if mask is None else mask


@torch.no_grad()
def sample_fast(model: WaveNet, label, noise, temperature, observed=None, mask=None) -> torch.Tensor:
    """label [B], noise [B, T, *noise_shape] uniform (T a multiple of chunk), temperature [B],
    observed/mask [B, T] -> codes [B, T] int64, one Step per chunk."""
    k_len, t_len = model.config.chunk, noise.shape[1]
    if t_len % k_len:
        raise ValueError(f"{t_len} samples are not a whole number of chunks of {k_len}")
    observed, mask = _defaults(noise, observed, mask)
    step = Step(model)
    (queue,) = initial_state(step, len(noise)).values()
    x, chunks = torch.full((len(noise), k_len), START, dtype=torch.long), []
    for i in range(0, t_len, k_len):
        x, queue = step(x, queue, noise[:, i: i + k_len], temperature, label,
                        observed[:, i: i + k_len], mask[:, i: i + k_len])
        chunks.append(x)
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def sample_naive(model: WaveNet, label, noise, temperature, observed=None, mask=None) -> torch.Tensor:
    """Reference sampler: the whole model on the whole prefix, once per sample."""
    observed, mask = _defaults(noise, observed, mask)
    audio = torch.zeros(noise.shape[:2], dtype=torch.long)
    for t in range(noise.shape[1]):
        params = model.params(audio[:, : t + 1], label)[:, t]  # [B, channels]; position t sees audio[:, :t]
        drawn = model.output.sample(params, noise[:, t], temperature)
        audio[:, t] = torch.where(mask[:, t] > 0, observed[:, t], drawn)
    return audio


def build(model_config: dict, split) -> WaveNet:
    """A WaveNet over `split`'s levels and voices with `model_config` hyper-parameters."""
    return WaveNet(WaveNetConfig(levels=split.levels, num_classes=split.num_classes, **model_config))


def sample_audio(model: WaveNet, generator: torch.Generator, seconds: float = 1.0) -> torch.Tensor:
    """One clip of about `seconds` per voice, at temperature 1: codes [num_classes, T] int64."""
    from training.data.speech import SAMPLE_RATE

    c = model.config
    t_len = max(1, round(seconds * SAMPLE_RATE / c.chunk)) * c.chunk
    label = torch.arange(c.num_classes)
    noise = torch.rand(len(label), t_len, *model.output.noise_shape, generator=generator)
    return sample_fast(model, label, noise.to(model.skip.weight.dtype), torch.ones(len(label)))


def exported_functions(model: WaveNet, split) -> tuple[dict, dict]:
    """(functions, capabilities): each function is (module, example inputs, output names[, dynamic axes by input]).

    A stream or sample request defaults to one second of audio, sample_rate // chunk calls.
    """
    c, b = model.config, 2
    step = Step(model)
    state = initial_state(step, b)
    label, chunk = torch.zeros(b, dtype=torch.long), torch.full((b, c.chunk), START, dtype=torch.long)
    noise_shape = [c.chunk, *model.output.noise_shape]
    functions = {
        "log_prob": (model, {"x": torch.full((b, split.shape[0]), START, dtype=torch.long), "label": label},
                     ["log_prob"], {"x": {1: "time"}}),
        "sample_step": (step, {
            "x_prev": chunk, **state, "noise": torch.rand(b, *noise_shape), "temperature": torch.ones(b),
            "label": label, "observed": chunk, "mask": torch.zeros_like(chunk),
        }, ["x"] + [f"next_{name}" for name in state]),
    }
    shapes = {name: {"dtype": "float32", "shape": shape} for name, shape in step.state_shapes().items()}
    autoregressive = {"procedure": "autoregressive", "function": "sample_step",
                      "steps": max(1, split.sample_rate // c.chunk), "step_shape": [c.chunk],
                      "noise_shape": noise_shape, "state": shapes, "x_prev_init": START}
    capabilities = {
        "sample": autoregressive,
        "complete": autoregressive,
        "stream": autoregressive,
        "score": {"procedure": "direct", "function": "log_prob", "method": "exact"},
    }
    return functions, capabilities

"""char-RNN: an LSTM language model over characters (Karpathy 2015, "The Unreasonable
Effectiveness of Recurrent Neural Networks").

Tokens are the `levels` characters of the data's vocabulary (96 for pydoc-text:
"\\n" and printable ASCII, see training.data.text) plus one start token BOS = levels
(96 for pydoc-text), which only ever enters the model. p(x) = prod_t p(x_t | x_<t):
character t is predicted from the LSTM state after BOS, x_0, ..., x_{t-1}, so x_0
is predicted after BOS from the zero state.

Usage (pydoc-text: V = 96 characters, BOS = 96):
    model = build({"hidden": 256, "n_layers": 2}, split)
    model.log_prob(x)                       # x [B, T] int64 in 0..95 -> nats per sequence [B]
    sample_fast(model, noise, temperature, top_k)   # noise [B, T] uniform -> [B, T] ids

Fast sampling is one `Step` per character with every layer's LSTM (h, c) as
explicit float tensors h, c [B, L, H]. Sampling is inverse-CDF on
softmax(logits / temperature) restricted to the top_k largest logits of the row
(top_k = 0 or >= V: all of them); where mask is 1 the step emits the observed
character instead (prompt, completion) and the state conditions on it.
`sample_fast` equals `sample_naive` (the whole model on the whole prefix per
character) under the same noise.
"""

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.distributions import categorical

DEFAULT_STEPS = 200  # characters a sample request generates unless it says otherwise


@dataclass
class CharRNNConfig:
    levels: int = 96  # vocabulary size V; token V is BOS
    embed: int = 64
    hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.0  # between LSTM layers, training only

    def to_dict(self) -> dict:
        return asdict(self)


class CharRNN(nn.Module):
    def __init__(self, config: CharRNNConfig):
        super().__init__()
        self.config = c = config
        self.bos = c.levels
        self.embedding = nn.Embedding(c.levels + 1, c.embed)
        self.lstm = nn.LSTM(c.embed, c.hidden, c.n_layers, batch_first=True,
                            dropout=c.dropout if c.n_layers > 1 else 0.0)
        self.head = nn.Linear(c.hidden, c.levels)

    def shift(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Embedded characters e [B, T, E] -> the model's inputs [B, T, E]: BOS, e_0, ..., e_{T-2}."""
        bos = self.embedding(torch.full_like(x[:, :1], self.bos))  # [B, 1, E], batch-size agnostic for export
        return torch.cat([bos, e[:, :-1]], dim=1)

    def readout(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs [B, T, E] from the zero state -> logits [B, T, V]."""
        out, _ = self.lstm(inputs)
        return self.head(out)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T] ids -> logits [B, T, V]; position t sees x[:, :t] only."""
        x = x.long()
        return self.readout(self.shift(self.embedding(x), x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats: x [B, T] ids -> [B]."""
        return categorical.log_prob(self.logits(x), x).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exported `log_prob`."""
        return self.log_prob(x)


def loss(model: CharRNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in nats per sequence (y is unused)."""
    return -model.log_prob(x).mean()


def draw(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """logits [B, V], u [B] uniform, temperature [B], top_k [B] int64 -> ids [B] int64.

    Inverse-CDF sampling from softmax(logits / temperature) over the top_k largest
    logits of each row (0 or >= V: all; ties with the k-th logit are kept too).
    """
    v = logits.shape[-1]
    k = torch.where((top_k <= 0) | (top_k > v), torch.full_like(top_k, v), top_k)  # [B] in 1..V
    ranked = torch.sort(logits, dim=-1, descending=True).values  # [B, V]
    threshold = ranked.gather(-1, (k - 1).unsqueeze(-1))  # [B, 1]: the k-th largest logit
    keep = logits >= threshold  # [B, V]
    drawn = categorical.sample(logits.masked_fill(~keep, float("-inf")), u, temperature)  # [B]
    # float rounding can leave the CDF's top a hair under 1: a u above it lands on the last kept id, not past it
    last_kept = (keep.long() * torch.arange(v)).argmax(-1)  # [B]
    return torch.where(keep.gather(-1, drawn.unsqueeze(-1)).squeeze(-1), drawn, last_kept)


class Step(nn.Module):
    """One character per call, every LSTM layer's (h, c) as explicit state h, c [B, L, H]."""

    def __init__(self, model: CharRNN):
        super().__init__()
        self.model = model

    def state_shapes(self) -> dict[str, list[int]]:
        c = self.model.config
        return {"h": [c.n_layers, c.hidden], "c": [c.n_layers, c.hidden]}

    def forward(self, x_prev, h, c, noise, temperature, top_k, observed, mask):
        """x_prev, observed, mask [B, 1] int64 (x_prev = BOS at the first step), h, c [B, L, H],
        noise [B, 1] uniform, temperature [B], top_k [B] int64 -> (x [B, 1] int64, next_h, next_c)."""
        e = self.model.embedding(x_prev)  # [B, 1, E]
        state = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())  # [L, B, H] each
        out, (next_h, next_c) = self.model.lstm(e, state)
        logits = self.model.head(out[:, 0])  # [B, V]
        drawn = draw(logits, noise[:, 0], temperature, top_k)
        x = torch.where(mask[:, 0] > 0, observed[:, 0], drawn)[:, None]
        return x, next_h.transpose(0, 1), next_c.transpose(0, 1)


def initial_state(step: Step, batch: int) -> dict[str, torch.Tensor]:
    dtype = step.model.head.weight.dtype
    return {name: torch.zeros([batch] + shape, dtype=dtype) for name, shape in step.state_shapes().items()}


def _defaults(noise, observed, mask):
    observed = torch.zeros(noise.shape, dtype=torch.long) if observed is None else observed
    return observed, torch.zeros_like(observed) if mask is None else mask


@torch.no_grad()
def sample_fast(model: CharRNN, noise, temperature, top_k, observed=None, mask=None) -> torch.Tensor:
    """noise [B, T] uniform, temperature [B], top_k [B] int64, observed/mask [B, T] -> ids [B, T], a Step per char."""
    observed, mask = _defaults(noise, observed, mask)
    step = Step(model)
    state = initial_state(step, len(noise))
    x, chars = torch.full((len(noise), 1), model.bos, dtype=torch.long), []
    for t in range(noise.shape[1]):
        x, *values = step(x, *state.values(), noise[:, t: t + 1], temperature, top_k,
                          observed[:, t: t + 1], mask[:, t: t + 1])
        state = dict(zip(state, values, strict=True))
        chars.append(x)
    return torch.cat(chars, dim=1)


@torch.no_grad()
def sample_naive(model: CharRNN, noise, temperature, top_k, observed=None, mask=None) -> torch.Tensor:
    """Reference sampler: the whole model on the whole prefix, once per character."""
    observed, mask = _defaults(noise, observed, mask)
    text = torch.zeros(noise.shape, dtype=torch.long)
    for t in range(noise.shape[1]):
        logits = model.logits(text[:, : t + 1])[:, t]  # [B, V]; position t sees text[:, :t]
        drawn = draw(logits, noise[:, t], temperature, top_k)
        text[:, t] = torch.where(mask[:, t] > 0, observed[:, t], drawn)
    return text


def build(model_config: dict, split) -> CharRNN:
    """A char-RNN over `split`'s vocabulary (levels) with `model_config` hyper-parameters."""
    return CharRNN(CharRNNConfig(levels=split.levels, **model_config))


def sample_text(model: CharRNN, generator: torch.Generator, n: int = 4, length: int = 300,
                temperature: float = 0.8) -> list[str]:
    """n samples of `length` characters, decoded with pydoc-text's vocabulary."""
    from training.data.text import decode

    noise = torch.rand(n, length, generator=generator).to(model.head.weight.dtype)
    ids = sample_fast(model, noise, torch.full((n,), temperature, dtype=noise.dtype),
                      torch.zeros(n, dtype=torch.long))
    return [decode(row) for row in ids]


def exported_functions(model: CharRNN, split) -> tuple[dict, dict]:
    """(functions, capabilities): each function is (module, example inputs, output names[, dynamic axes by input])."""
    b, seq_len = 2, split.shape[0]
    step = Step(model)
    state = initial_state(step, b)
    one = torch.zeros(b, 1, dtype=torch.long)
    functions = {
        "log_prob": (model, {"x": torch.zeros(b, seq_len, dtype=torch.long)}, ["log_prob"], {"x": {1: "time"}}),
        "sample_step": (step, {
            "x_prev": torch.full((b, 1), model.bos, dtype=torch.long), **state,
            "noise": torch.rand(b, 1), "temperature": torch.ones(b), "top_k": torch.zeros(b, dtype=torch.long),
            "observed": one, "mask": one,
        }, ["x"] + [f"next_{name}" for name in state]),
    }
    shapes = {name: {"dtype": "float32", "shape": shape} for name, shape in step.state_shapes().items()}
    autoregressive = {"procedure": "autoregressive", "function": "sample_step", "steps": DEFAULT_STEPS,
                      "step_shape": [1], "noise_shape": [1], "state": shapes, "x_prev_init": model.bos}
    capabilities = {
        "sample": autoregressive,
        "complete": autoregressive,
        "stream": autoregressive,
        "score": {"procedure": "direct", "function": "log_prob", "method": "exact"},
    }
    return functions, capabilities

"""The maths of the char-RNN: fixed vocabulary and split, normalisation, causality, fast = naive,
top-k and temperature sampling, export parity."""

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy import stats

from training.data import text
from training.distributions import categorical
from training.families import charrnn
from training.families.charrnn import CharRNN, CharRNNConfig, Step, draw, initial_state, sample_fast, sample_naive

REPO = Path(__file__).resolve().parents[2]


def small_model(levels=6, hidden=8, layers=2, dtype=torch.float64, seed=0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(CharRNNConfig(levels=levels, embed=5, hidden=hidden, n_layers=layers)).to(dtype).eval()
    with torch.no_grad():  # sharper logits than the default init, so that samples are not near-uniform
        model.head.weight.mul_(4.0)
    return model


def step_inputs(model: CharRNN, b: int, g: torch.Generator, top_k=0, temperature=1.0) -> dict:
    """Sample-step inputs with a random previous character and random (h, c)."""
    dtype = model.head.weight.dtype
    state = {k: torch.randn(v.shape, generator=g, dtype=dtype) * 0.5 for k, v in initial_state(Step(model), b).items()}
    return {"x_prev": torch.randint(0, model.config.levels + 1, (b, 1), generator=g), **state,
            "noise": torch.rand(b, 1, generator=g, dtype=dtype),
            "temperature": torch.full((b,), temperature, dtype=dtype), "top_k": torch.full((b,), top_k),
            "observed": torch.zeros(b, 1, dtype=torch.long), "mask": torch.zeros(b, 1, dtype=torch.long)}


def step_logits(model: CharRNN, inputs: dict) -> torch.Tensor:
    """The logits [B, V] a step samples from, computed apart from Step."""
    h, c = (inputs[k].transpose(0, 1).contiguous() for k in ("h", "c"))
    out, _ = model.lstm(model.embedding(inputs["x_prev"]), (h, c))
    return model.head(out[:, 0])


# --- data -----------------------------------------------------------------------------------------------


def test_vocabulary_is_fixed_and_round_trips():
    assert len(text.VOCABULARY) == 96 and text.VOCABULARY[0] == "\n" and text.VOCABULARY[1:] == "".join(
        map(chr, range(32, 127)))
    s = "def f(x):\n    return {'a': x ** 2}  # ~`|\\"
    ids = text.encode(s)
    assert ids.dtype == np.int64 and text.decode(ids) == s
    assert text.decode(text.encode("tab\t’quote…")) == "tab??quote?"


def test_split_is_fixed_by_topic_and_disjoint():
    from pydoc_data.topics import topics

    train, test = text.topic_split()
    keys = sorted(topics)
    assert test == keys[9::10] and not set(train) & set(test) and sorted(train + test) == keys
    a, b = text.pydoc_text(), text.pydoc_text()
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    assert a.x_train.dtype == np.uint8 and a.x_train.shape[1] == 128 and a.shape == (128,)
    assert a.levels == 96 and a.num_classes == 0 and a.name == "pydoc-text"
    assert a.x_train.max() < 96 and not a.y_train.any() and not a.y_test.any()
    assert text.decode(a.x_test[0]) == text.decode(text.encode(topics[test[0]][:128]))
    assert text.decode(a.x_train[0]) == text.decode(text.encode(topics[train[0]][:128]))
    assert text.pydoc_text(seq_len=64).x_test.shape[1] == 64


# --- the model ------------------------------------------------------------------------------------------


def test_model_distribution_sums_to_one():
    """Over every sequence of length 3 with a vocabulary of 4 (64 of them), p(x) sums to 1."""
    model = small_model(levels=4)
    x = torch.tensor(list(itertools.product(range(4), repeat=3)))
    assert model.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_logits_depend_only_on_earlier_characters():
    """Causality by input gradients: logits at t have zero gradient w.r.t. the embedding of x_t' for t' >= t."""
    model = small_model(layers=3)
    t_len = 7
    x = torch.randint(0, 6, (2, t_len), generator=torch.Generator().manual_seed(0))
    e = model.embedding(x).detach().requires_grad_()
    logits = model.readout(model.shift(e, x))  # [2, T, V]
    for t in range(t_len):
        (grad,) = torch.autograd.grad(logits[:, t].sum(), e, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 2)) != 0  # [T]
        assert torch.equal(seen, torch.arange(t_len) < t), f"position {t} sees {seen.tolist()}"


def test_loss_is_mean_nll_per_sequence():
    model = small_model()
    x = torch.randint(0, 6, (3, 5))
    by_hand = -torch.stack([model.log_prob(x[i: i + 1])[0] for i in range(3)]).mean()
    assert torch.allclose(charrnn.loss(model, x, torch.zeros(3, dtype=torch.long)), by_hand)


# --- sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [0, 2])
def test_fast_sampling_equals_naive_under_the_same_noise(top_k):
    model = small_model()
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(4, 12, generator=g, dtype=torch.float64)
    temperature = torch.tensor([0.7, 1.3, 2.0, 0.5], dtype=torch.float64)
    k = torch.full((4,), top_k)
    fast = sample_fast(model, noise, temperature, k)
    assert torch.equal(fast, sample_naive(model, noise, temperature, k))
    assert fast.unique().numel() > 1  # not degenerate
    if top_k:  # every character is among the top-k of its step's logits
        logits = model.logits(fast)
        rank = (logits > logits.gather(-1, fast[..., None])).sum(-1)
        assert (rank < top_k).all()


def test_prompt_and_completion_keep_observed_characters():
    model = small_model()
    g = torch.Generator().manual_seed(2)
    noise = torch.rand(3, 10, generator=g, dtype=torch.float64)
    observed = torch.randint(0, 6, (3, 10), generator=g)
    mask = torch.zeros(3, 10, dtype=torch.long)
    mask[:, :4] = 1  # a prompt
    mask[1, 6:8] = 1  # and a gap to fill
    temperature, k = torch.full((3,), 0.9, dtype=torch.float64), torch.tensor([0, 2, 3])
    fast = sample_fast(model, noise, temperature, k, observed, mask)
    assert torch.equal(fast, sample_naive(model, noise, temperature, k, observed, mask))
    assert torch.equal(fast[mask > 0], observed[mask > 0])
    free = sample_fast(model, noise, temperature, k)
    assert not torch.equal(free[:, 4:], fast[:, 4:])  # what follows conditions on the prompt


def test_top_k_one_is_the_argmax():
    model = small_model(levels=9)
    g = torch.Generator().manual_seed(3)
    inputs = step_inputs(model, 64, g, top_k=1, temperature=1.7)
    with torch.no_grad():
        x, _, _ = Step(model)(*inputs.values())
        assert torch.equal(x[:, 0], step_logits(model, inputs).argmax(-1))
        greedy = sample_fast(model, torch.rand(5, 9, generator=g, dtype=torch.float64),
                             torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.long))
        assert torch.equal(greedy, model.logits(greedy).argmax(-1))


def test_draw_never_leaves_the_top_k_even_at_u_near_one():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0]] * 3)
    u = torch.tensor([0.0, 0.9, 1.0])  # u = 1 is at or past the top of any rounded CDF
    got = draw(logits, u, torch.ones(3), torch.tensor([1, 2, 2]))
    assert got.tolist() == [0, 2, 2]
    assert categorical.sample(logits.masked_fill(logits < 2.0, float("-inf")), u, torch.ones(3))[2] == 3  # unguarded


def test_step_draws_match_softmax_over_top_k():
    """Chi-square: 40,000 draws of one step, temperature 0.8 and top_k 3, against softmax(logits / 0.8) on the top 3."""
    model = small_model(levels=8, dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    inputs = step_inputs(model, 1, g, top_k=3, temperature=0.8)
    n = 40_000
    inputs = {k: v.expand(n, *v.shape[1:]).contiguous() for k, v in inputs.items()}
    inputs["noise"] = torch.rand(n, 1, generator=g)
    with torch.no_grad():
        x, _, _ = Step(model)(*inputs.values())
        logits = step_logits(model, {k: v[:1] for k, v in inputs.items()})[0].double()
    top = logits.topk(3).indices
    probs = torch.zeros_like(logits)
    probs[top] = torch.softmax(logits[top] / 0.8, dim=0)
    counts = torch.bincount(x[:, 0], minlength=8).double()
    assert counts[probs == 0].sum() == 0
    expected = probs[top] * n
    assert expected.min() > 50  # a meaningful test: no tiny cell
    chi2 = ((counts[top] - expected) ** 2 / expected).sum().item()
    assert stats.chi2.sf(chi2, df=2) > 1e-3, (counts[top], expected)


# --- export ---------------------------------------------------------------------------------------------


def _onnx(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A float32 char-RNN's functions exported with training.export.export_function."""
    from training.data.images import Split
    from training.export import export_function

    model = small_model(levels=7, hidden=12, layers=2, dtype=torch.float32)
    split = Split("toy", np.zeros((4, 10), np.uint8), np.zeros(4, np.int64), np.zeros((2, 10), np.uint8),
                  np.zeros(2, np.int64), levels=7, num_classes=0)
    functions, capabilities = charrnn.exported_functions(model, split)
    out = tmp_path_factory.mktemp("charrnn")
    entries = {name: export_function(out, name, *spec) for name, spec in functions.items()}
    return model, out, entries, capabilities


def test_exported_functions_follow_the_service_conventions(exported):
    import jsonschema

    _, _, entries, capabilities = exported
    step = entries["sample_step"]
    assert [t["name"] for t in step["inputs"]] == ["x_prev", "h", "c", "noise", "temperature", "top_k",
                                                   "observed", "mask"]
    assert [t["name"] for t in step["outputs"]] == ["x", "next_h", "next_c"]
    assert step["inputs"][1] == {"name": "h", "dtype": "float32", "shape": [-1, 2, 12]}
    assert capabilities["sample"]["state"] == {"h": {"dtype": "float32", "shape": [2, 12]},
                                               "c": {"dtype": "float32", "shape": [2, 12]}}
    assert capabilities["sample"]["x_prev_init"] == 7 and capabilities["score"]["function"] == "log_prob"
    schema = json.loads((REPO / "proto" / "manifest.schema.json").read_text())
    jsonschema.validate(capabilities, {**schema["properties"]["capabilities"], "$defs": schema["$defs"]})


def test_export_parity_log_prob(exported):
    model, out, _, _ = exported
    x = torch.randint(0, 7, (5, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eager = model.log_prob(x).numpy()
        ts = torch.jit.load(str(out / "log_prob.pt"))(x).numpy()
        ts_other_length = torch.jit.load(str(out / "log_prob.pt"))(x[:, :6]).numpy()
        eager_other_length = model.log_prob(x[:, :6]).numpy()
    onnx = _onnx(out / "log_prob.onnx").run(None, {"x": x.numpy()})[0]
    assert np.allclose(onnx, eager, rtol=1e-4) and np.allclose(ts, eager, rtol=1e-4)
    assert np.allclose(ts_other_length, eager_other_length, rtol=1e-4)  # TorchScript is length-agnostic


def test_export_parity_sample_step(exported):
    model, out, _, _ = exported
    g = torch.Generator().manual_seed(7)
    inputs = step_inputs(model, 6, g, temperature=0.9)
    inputs["top_k"] = torch.tensor([0, 1, 2, 3, 7, 50])
    inputs["observed"], inputs["mask"] = torch.full((6, 1), 5), torch.tensor([[1], [0], [0], [0], [0], [1]])
    with torch.no_grad():
        eager = [t.numpy() for t in Step(model)(*inputs.values())]
        ts = [t.numpy() for t in torch.jit.load(str(out / "sample_step.pt"))(*inputs.values())]
    onnx = _onnx(out / "sample_step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    assert eager[0][[0, 5], 0].tolist() == [5, 5]
    for got in (onnx, ts):
        assert np.array_equal(got[0], eager[0])
        for a, e in zip(got[1:], eager[1:], strict=True):
            assert np.allclose(a, e, rtol=1e-4, atol=1e-5)


def test_onnx_sampling_equals_eager_sampling(exported):
    """A whole sample through the ONNX step (BOS first, state fed back) equals sample_fast."""
    model, out, _, _ = exported
    session = _onnx(out / "sample_step.onnx")
    g = torch.Generator().manual_seed(8)
    b, t_len = 3, 15
    noise, temperature = torch.rand(b, t_len, generator=g), torch.tensor([1.0, 0.6, 1.4])
    top_k = torch.tensor([0, 2, 4])
    expected = sample_fast(model, noise, temperature, top_k).numpy()
    feeds = {"x_prev": np.full((b, 1), model.bos, np.int64), "h": np.zeros((b, 2, 12), np.float32),
             "c": np.zeros((b, 2, 12), np.float32), "temperature": temperature.numpy(), "top_k": top_k.numpy(),
             "observed": np.zeros((b, 1), np.int64), "mask": np.zeros((b, 1), np.int64)}
    chars = []
    for t in range(t_len):
        x, h, c = session.run(None, {**feeds, "noise": noise[:, t: t + 1].numpy()})
        feeds |= {"x_prev": x, "h": h, "c": c}
        chars.append(x)
    assert np.array_equal(np.concatenate(chars, axis=1), expected)


# --- configs --------------------------------------------------------------------------------------------


def test_tiny_config_trains_one_epoch():
    from training.train import _epoch, load_config

    config = load_config(REPO / "training" / "configs" / "charrnn-tiny.json")
    assert config["family"] == "charrnn" and config["dataset"] == "pydoc-text"
    load_config(REPO / "training" / "configs" / "charrnn.json")
    split = text.pydoc_text()
    torch.manual_seed(0)
    model = charrnn.build(config["model"], split)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["train"]["lr"])
    nll = _epoch(charrnn, model, optimizer, split, config["train"], 0)
    assert np.isfinite(nll) and nll < 128 * np.log(96) * 1.05
    samples = charrnn.sample_text(model.eval(), torch.Generator().manual_seed(0), n=2, length=20)
    assert len(samples) == 2 and all(len(s) == 20 and set(s) <= set(text.VOCABULARY) for s in samples)


def test_tiny_run_exports_a_text_manifest_whose_log_prob_takes_any_length(tiny_text_run, tmp_path):
    """export(): kind text with the vocabulary, per-character calibration, and log_prob over any sequence length."""
    from training.export import export
    from training.train import load_model

    run = tiny_text_run
    assert (run / "samples.txt").read_text().strip()
    out = export(run, tmp_path / "models", name="charrnn")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "text" and "".join(manifest["data"]["vocabulary"]) == text.VOCABULARY
    per_char = np.array(json.loads((run / "eval.json").read_text())["test_nll_per_example"]) / 128
    assert manifest["calibration"]["score"] == "nll_nats_per_char"
    assert np.allclose(np.interp(0.5, manifest["calibration"]["quantiles"], manifest["calibration"]["values"]),
                       np.median(per_char), rtol=1e-6)
    assert manifest["functions"]["log_prob"]["inputs"][0]["shape"] == [-1, -1]
    model = load_model(run)[0]
    session = ort.InferenceSession(str(out / "log_prob.onnx"), providers=["CPUExecutionProvider"])
    for snippet in ["def f(x):\n    return x", "a"]:
        x = torch.from_numpy(text.encode(snippet))[None]
        with torch.no_grad():
            expected = model.log_prob(x).numpy()
        assert np.allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=1e-4)

"""The maths of the WaveNet: causality and receptive field, normalisation of both outputs, voice
conditioning, fast = naive (with and without a prefix, one sample or a chunk per call, receptive field
wider and narrower than the sequence), export parity; the speech data and the train -> export path."""

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.data import speech, text
from training.distributions import mu_law
from training.families import wavenet
from training.families.wavenet import START, Step, WaveNet, WaveNetConfig, initial_state, sample_fast, sample_naive

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ["categorical", "logistic_mixture"]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng): no speech corpus")
pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(output="categorical", chunk=3, dtype=torch.float64, seed=0) -> WaveNet:
    """Dilations 1, 2, 4, 8 twice: receptive field 31; 3 voices."""
    torch.manual_seed(seed)
    config = WaveNetConfig(num_classes=3, residual=6, skip=7, layers=4, stacks=2, chunk=chunk, output=output,
                           mixtures=3)
    model = WaveNet(config).to(dtype).eval()
    with torch.no_grad():  # sharper distributions than the default init, so that samples are not near-uniform
        model.head[-1].weight.mul_(4.0)
    return model


def codes(b, t, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


# --- the model ------------------------------------------------------------------------------------------


def test_sample_t_depends_on_exactly_the_receptive_field_before_it():
    """Input gradients: params at t see the embedding of x_s iff t - receptive_field <= s < t."""
    model = small_model()
    t_len, field = 40, model.config.receptive_field
    assert field == 31
    x, label = codes(2, t_len), torch.tensor([0, 2])
    e = model.embedding(x).detach().requires_grad_()
    params = model.readout(model.shift(e, x), label)  # [2, T, 256]
    s = torch.arange(t_len)
    for t in range(t_len):
        (grad,) = torch.autograd.grad(params[:, t].sum(), e, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 2)) != 0  # [T]
        assert torch.equal(seen, (s < t) & (s >= t - field)), f"position {t} sees {seen.nonzero().flatten().tolist()}"


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_sample_distribution_sums_to_one_over_256_codes(output):
    model = small_model(output)
    x, label = codes(2, 9), torch.tensor([1, 0])
    params = model.params(x, label)  # [2, 9, channels]
    every = torch.arange(256).view(256, 1, 1).expand(256, 2, 9)
    log_p = model.output.log_prob(params.expand(256, *params.shape), every)  # [256, 2, 9]
    assert torch.allclose(log_p.logsumexp(0), torch.zeros(2, 9, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(model.log_prob(x, label), log_p.gather(0, x[None]).sum(-1)[0])


def test_loss_is_mean_nll_per_sequence_given_the_voice():
    model = small_model()
    x, label = codes(3, 7), torch.tensor([0, 1, 2])
    by_hand = -torch.stack([model.log_prob(x[i: i + 1], label[i: i + 1])[0] for i in range(3)]).mean()
    assert torch.allclose(wavenet.loss(model, x, label), by_hand)


def test_the_voice_changes_the_distribution_and_the_samples():
    model = small_model()
    x = codes(1, 12).expand(3, 12)
    log_p = model.log_prob(x, torch.arange(3))
    assert len(set(log_p.tolist())) == 3
    noise = torch.rand(3, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    samples = sample_fast(model, torch.arange(3), noise, torch.ones(3, dtype=torch.float64))
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])


# --- sampling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("t_len", [15, 45])  # the receptive field (31) is wider, then narrower
def test_fast_sampling_equals_naive_under_the_same_noise(output, chunk, t_len):
    model = small_model(output, chunk)
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(3, t_len, *model.output.noise_shape, generator=g, dtype=torch.float64)
    label, temperature = torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.6, 1.4], dtype=torch.float64)
    fast = sample_fast(model, label, noise, temperature)
    assert torch.equal(fast, sample_naive(model, label, noise, temperature))
    assert fast.unique().numel() > t_len // 3  # not degenerate

    observed, mask = codes(3, t_len, seed=2), torch.zeros(3, t_len, dtype=torch.long)
    mask[:, :7] = 1  # a prefix
    mask[1, 10:13] = 1  # and a gap
    completed = sample_fast(model, label, noise, temperature, observed, mask)
    assert torch.equal(completed, sample_naive(model, label, noise, temperature, observed, mask))
    assert torch.equal(completed[mask > 0], observed[mask > 0])
    assert not torch.equal(completed[:, 7:], fast[:, 7:])  # what follows conditions on the prefix


def test_a_chunk_continues_from_the_last_previous_sample_and_the_queue():
    """Two calls of 3 equal one sample_fast of 6; the second call reads only x_prev[:, -1] of its x_prev."""
    model = small_model(chunk=3)
    step, g = Step(model), torch.Generator().manual_seed(4)
    noise, label = torch.rand(2, 6, generator=g, dtype=torch.float64), torch.tensor([2, 0])
    ones, zeros = torch.ones(2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.long)
    (queue,) = initial_state(step, 2).values()
    with torch.no_grad():
        first, queue = step(torch.full((2, 3), START), queue, noise[:, :3], ones, label, zeros, zeros)
        scrambled = torch.cat([codes(2, 2, seed=5), first[:, -1:]], dim=1)
        second, _ = step(scrambled, queue, noise[:, 3:], ones, label, zeros, zeros)
    assert torch.equal(torch.cat([first, second], 1), sample_fast(model, label, noise, ones))


# --- export ---------------------------------------------------------------------------------------------


def _onnx(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=OUTPUTS)
def exported(request, tmp_path_factory):
    """A float32 WaveNet (chunk 4) exported with training.export.export_function."""
    from training.export import export_function

    model = small_model(request.param, chunk=4, dtype=torch.float32)
    split = speech.SpeechSplit("toy", np.zeros((4, 10), np.uint8), np.arange(4) % 3, np.zeros((2, 10), np.uint8),
                               np.zeros(2, np.int64), levels=256, num_classes=3, voices=("a", "b", "c"))
    functions, capabilities = wavenet.exported_functions(model, split)
    out = tmp_path_factory.mktemp("wavenet")
    entries = {name: export_function(out, name, *spec) for name, spec in functions.items()}
    return model, out, entries, capabilities


def test_exported_functions_follow_the_service_conventions(exported):
    import jsonschema

    model, _, entries, capabilities = exported
    step, noise = entries["sample_step"], [4, *model.output.noise_shape]
    assert [t["name"] for t in step["inputs"]] == ["x_prev", "queue", "noise", "temperature", "label",
                                                   "observed", "mask"]
    assert [t["name"] for t in step["outputs"]] == ["x", "next_queue"]
    assert step["inputs"][1] == {"name": "queue", "dtype": "float32", "shape": [-1, 30, 6]}
    assert step["inputs"][2]["shape"] == [-1, *noise] and step["outputs"][0]["shape"] == [-1, 4]
    assert entries["log_prob"]["inputs"] == [{"name": "x", "dtype": "int64", "shape": [-1, -1]},
                                             {"name": "label", "dtype": "int64", "shape": [-1]}]
    sample = capabilities["sample"]
    assert sample == capabilities["complete"] == capabilities["stream"]
    assert (sample["step_shape"], sample["noise_shape"], sample["x_prev_init"], sample["steps"]) == ([4], noise, 128,
                                                                                                    4000)
    assert sample["state"] == {"queue": {"dtype": "float32", "shape": [30, 6]}}
    schema = json.loads((REPO / "proto" / "manifest.schema.json").read_text())
    jsonschema.validate(capabilities, {**schema["properties"]["capabilities"], "$defs": schema["$defs"]})


def test_export_parity_log_prob_at_any_length(exported):
    model, out, _, _ = exported
    label = torch.tensor([0, 1, 2, 1])
    scripted = torch.jit.load(str(out / "log_prob.pt"))
    session = _onnx(out / "log_prob.onnx")
    for t_len in (10, 37):
        x = codes(4, t_len, seed=t_len)
        with torch.no_grad():
            eager, ts = model.log_prob(x, label).numpy(), scripted(x, label).numpy()
        onnx = session.run(None, {"x": x.numpy(), "label": label.numpy()})[0]
        assert np.allclose(onnx, eager, rtol=1e-4) and np.allclose(ts, eager, rtol=1e-4)


def test_export_parity_sample_step(exported):
    model, out, _, _ = exported
    g = torch.Generator().manual_seed(7)
    b = 5
    mask = torch.tensor([[1, 1, 0, 0]] + [[0, 0, 0, 0]] * 3 + [[0, 1, 0, 1]])
    inputs = {"x_prev": codes(b, 4, seed=8), "queue": torch.randn(b, 30, 6, generator=g) * 0.5,
              "noise": torch.rand(b, 4, *model.output.noise_shape, generator=g),
              "temperature": torch.tensor([1.0, 0.5, 1.5, 0.9, 1.0]), "label": torch.tensor([0, 1, 2, 0, 1]),
              "observed": torch.full((b, 4), 200), "mask": mask}
    with torch.no_grad():
        eager = [t.numpy() for t in Step(model)(*inputs.values())]
        ts = [t.numpy() for t in torch.jit.load(str(out / "sample_step.pt"))(*inputs.values())]
    onnx = _onnx(out / "sample_step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    assert eager[0][0, :2].tolist() == [200, 200] and eager[0][4, 1::2].tolist() == [200, 200]
    for got in (onnx, ts):
        assert np.array_equal(got[0], eager[0])
        assert np.allclose(got[1], eager[1], rtol=1e-4, atol=1e-5)


def test_onnx_sampling_equals_eager_sampling(exported):
    """A whole sample through the ONNX step (x_prev_init, zero queue, state fed back) equals sample_fast."""
    model, out, _, capabilities = exported
    session, b, calls = _onnx(out / "sample_step.onnx"), 3, 6
    g = torch.Generator().manual_seed(9)
    noise = torch.rand(b, 4 * calls, *model.output.noise_shape, generator=g)
    temperature, label = torch.tensor([1.0, 0.7, 1.2]), torch.tensor([2, 1, 0])
    expected = sample_fast(model, label, noise, temperature).numpy()
    feeds = {"x_prev": np.full((b, 4), capabilities["sample"]["x_prev_init"], np.int64),
             "queue": np.zeros((b, 30, 6), np.float32), "temperature": temperature.numpy(),
             "label": label.numpy(), "observed": np.zeros((b, 4), np.int64), "mask": np.zeros((b, 4), np.int64)}
    chunks = []
    for i in range(calls):
        x, queue = session.run(None, {**feeds, "noise": noise[:, 4 * i: 4 * i + 4].numpy()})
        feeds |= {"x_prev": x, "queue": queue}
        chunks.append(x)
    assert np.array_equal(np.concatenate(chunks, axis=1), expected)


@pytest.mark.parametrize("output", OUTPUTS)
def test_onnx_step_is_a_loop_over_unrolled_chunks_with_the_eager_outputs(output, tmp_path):
    """K = 24 samples per call export as a Loop of 2 chunks of 12: the codes and the queue of the eager step."""
    import onnx

    from training.export import export_function

    model, b = small_model(output, chunk=24, dtype=torch.float32), 3
    g = torch.Generator().manual_seed(3)
    inputs = {"x_prev": codes(b, 24, seed=4), "queue": torch.randn(b, 30, 6, generator=g) * 0.5,
              "noise": torch.rand(b, 24, *model.output.noise_shape, generator=g),
              "temperature": torch.tensor([1.0, 0.6, 1.3]), "label": torch.tensor([2, 0, 1]),
              "observed": torch.full((b, 24), 60), "mask": (torch.arange(24) % 5 == 0).long().expand(b, 24)}
    export_function(tmp_path, "sample_step", Step(model), inputs, ["x", "next_queue"])
    graph = onnx.load(str(tmp_path / "sample_step.onnx")).graph
    assert [n.op_type for n in graph.node].count("Loop") == 1 and len(graph.node) < 20
    with torch.no_grad():
        eager = [t.numpy() for t in Step(model)(*inputs.values())]
    got = _onnx(tmp_path / "sample_step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    assert np.array_equal(got[0], eager[0])
    assert np.allclose(got[1], eager[1], rtol=1e-4, atol=1e-5)


# --- data -----------------------------------------------------------------------------------------------


def test_a_missing_espeak_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        speech.synthesize("Hello there.", "en")


def test_sentences_are_prose_from_their_own_topics():
    from pydoc_data.topics import topics

    train, test = text.topic_split()
    some = speech.sentences(test, 5)
    assert len(some) == 5 and some == [s for s in speech.sentences(test) if s in some]
    assert all(any(s in " ".join(topics[k].split()) for k in test) for s in some)
    assert all(40 <= len(s) <= 200 and s[-1] in ".?!" and "  " not in s for s in speech.sentences(train, 50))


def test_wav_round_trips_every_mu_law_code(tmp_path):
    clips = np.stack([np.arange(256), np.arange(256)[::-1]])  # [2, 256]
    speech.write_wav(tmp_path / "x.wav", clips)
    with wave.open(str(tmp_path / "x.wav")) as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    gap = round(speech.GAP * rate)
    assert rate == 16000 and len(pcm) == 2 * (256 + gap)
    back = mu_law.encode(torch.from_numpy(pcm / 32767.0)).view(2, -1)
    assert torch.equal(back[:, :256], torch.from_numpy(clips)) and (back[:, 256:] == START).all()


@needs_espeak
def test_speech_tiny_is_16khz_mu_law_segments_labelled_by_voice():
    s = speech.pydoc_speech_tiny()
    assert s.x_train.dtype == np.uint8 and s.x_train.shape[1] == 2000 and s.shape == (2000,)
    assert (s.levels, s.num_classes, s.sample_rate, s.voices) == (256, 2, 16000, ("en", "en+f3"))
    assert set(np.unique(s.y_train)) == {0, 1} and set(np.unique(s.y_test)) == {0, 1}
    assert (np.abs(s.x_train.astype(int) - START) > 40).mean() > 0.05  # speech, not silence
    assert np.array_equal(speech.pydoc_speech_tiny().x_test, s.x_test)  # the cache gives the same corpus
    d = s.describe()
    assert (d["train_sentences"], d["test_sentences"]) == (6, 2) and d["synthesizer"].startswith("eSpeak NG")
    audio = speech.synthesize("One short sentence.", "en")
    assert audio.dtype == np.float32 and 0.5 < len(audio) / 16000 < 3 and np.abs(audio).max() <= 1
    assert np.abs(audio[0]) >= speech.SILENCE and np.abs(audio[-1]) >= speech.SILENCE  # trimmed


# --- configs and the train -> export path ---------------------------------------------------------------


def test_shipped_config_has_the_stated_receptive_field():
    from training.train import load_config

    config = load_config(REPO / "training" / "configs" / "wavenet.json")
    assert config["family"] == "wavenet" and config["dataset"] == "speech"
    c = WaveNetConfig(**config["model"])
    assert 500 <= c.receptive_field <= 1100 and 16000 % c.chunk == 0


@needs_espeak
def test_tiny_run_exports_an_audio_manifest(tiny_audio_run, tiny_audio_store):
    """train -> export: kind audio with voices and prior, per-sample calibration, a WAV of samples,
    and a log_prob that takes any length."""
    run = tiny_audio_run
    with wave.open(str(run / "samples.wav")) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 0
    out = tiny_audio_store / "wavenet" / "1"
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["data"]
    assert (data["kind"], data["levels"], data["sample_rate"], data["encoding"]) == ("audio", 256, 16000, "mu-law-8bit")
    assert data["classes"] == ["en", "en+f3"] and sum(data["class_prior"]) == pytest.approx(1)
    per_sample = np.array(json.loads((run / "eval.json").read_text())["test_nll_per_example"]) / data["shape"][0]
    calibration = manifest["calibration"]
    assert calibration["score"] == "nll_nats_per_sample"
    assert np.interp(0.5, calibration["quantiles"], calibration["values"]) == pytest.approx(np.median(per_sample))
    assert manifest["capabilities"]["stream"]["steps"] == 16000 // manifest["capabilities"]["stream"]["step_shape"][0]
    assert all((out / f).stat().st_size < 8e6 for f in manifest["files"])
    from training.train import load_model

    model = load_model(run)[0]
    x, label = codes(2, 333), torch.tensor([1, 0])
    with torch.no_grad():
        expected = model.log_prob(x, label).numpy()
    got = _onnx(out / "log_prob.onnx").run(None, {"x": x.numpy(), "label": label.numpy()})[0]
    assert np.allclose(got, expected, rtol=1e-4)

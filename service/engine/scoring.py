"""The engine's scoring: log-likelihoods, bounds and critics per input, and the anomaly detectors over them
(service.engine.anomaly).

A mixin of service.engine.engine.Engine, which gives it `model`, `models`, `settings`, `_caller`, `_batcher`,
`_in_worker`, the latent operations' `_score_bound` and `_check_work`, and the generation's `complete` (the
inversion detector's latent search).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from service.engine import anomaly, latent, procedures, worker_procedures
from service.engine.errors import InvalidInput, UnknownModel
from service.engine.generation import together
from service.engine.validation import ANOMALY_METHOD_MAX, check_levels, check_sequence, check_sequence_work

if TYPE_CHECKING:  # engine.py imports this module
    from service.engine.engine import LoadedModel

UNITS = {"text": "char", "audio": "sample"}  # what one value of a sequence is


def no_labels(name: str) -> InvalidInput:
    """The refusal of labels sent to a model whose score takes none."""
    return InvalidInput(f"labels: model {name!r} scores without labels", field="labels")


class BackgroundGone(InvalidInput):
    """The likelihood ratio's background model, served when the request's detector was chosen, gone before its score
    (unloaded, or its version's files gone from the store): refused as a detector the model cannot answer is, naming
    `anomaly_method`, not the request's model or version, which did not choose the background."""


class ScoringOperations:
    async def score(self, name: str, x: np.ndarray | list[np.ndarray], labels: list[int | None] | None = None,
                    *, method: str | None = None, k: int | None = None, refine_steps: int = 0,
                    seed: int = 0, anomaly_method: str | None = None, refine: str = "gradient") -> list[dict]:
        """x [B, *shape] (a sequence model: B arrays of any length) -> per input: log-likelihood (nats),
        bits per dimension (per character, per audio sample), method and anomaly flags.

        An importance-sampled bound (method elbo or iwae, k samples, after refine_steps refinements of the
        posterior by the rule `refine`; the noise from `seed`) comes with its standard error; so does an AIS
        estimate.

        `anomaly_method` names the anomaly detector (service/engine/anomaly.py; default: the manifest's
        calibration `default`); the answer's `anomaly` names it as `method`. A bound's detector scores the bound
        at the k and method its calibration records, whatever the request's (anomaly.bound_settings).

        A background model gone since the detector was chosen is as one not served: a default that needs it falls
        back to the base detector (scored again; the answer's `method` says so), a detector the request names that
        needs it is refused (BackgroundGone).
        """
        options = {"method": method, "k": k, "refine_steps": refine_steps, "seed": seed, "refine": refine}
        try:
            return await self._score(name, x, labels, anomaly_method, **options)
        except BackgroundGone:
            if anomaly_method is not None:
                raise
            return await self._score(name, x, labels, anomaly.base_detector(self.model(name).manifest), **options)

    async def _score(self, name: str, x: np.ndarray | list[np.ndarray], labels: list[int | None] | None,
                     anomaly_method: str | None, *, method: str | None, k: int | None, refine_steps: int, seed: int,
                     refine: str) -> list[dict]:
        """score, its detector named by `anomaly_method` (None: the model's default)."""
        m = self.model(name)
        cap = m.capability("score")
        detector = self._detector(m, cap, anomaly_method)
        if cap["procedure"] == "importance":
            if labels is not None:
                raise no_labels(name)
            x = check_levels(x, m.shape, m.data["levels"], "inputs")
            results = await self._score_bound(m, cap, x, method, k, refine_steps, seed, refine)
            await self._calibrated_bound(m, cap, x, results, detector, seed)
            return await self._detect(m, cap, x, labels, results, detector, seed=seed)
        if method is not None and method != cap.get("method", "exact"):
            raise InvalidInput(f"method: model {name!r} scores by {cap.get('method', 'exact')!r} only", field="method")
        for field, value in (("k", k), ("refine_steps", refine_steps or None),
                             ("refine", None if refine == "gradient" else refine)):
            if value is not None:
                raise InvalidInput(f"{field}: model {name!r} computes its score directly; it takes no {field}",
                                   field=field)
        if m.is_sequence:
            if len(x) == 0:
                raise InvalidInput("inputs: give at least one input", field="inputs")
            x = [check_sequence(xi, m.data["levels"], f"inputs[{b}]") for b, xi in enumerate(x)]
        else:
            x = check_levels(x, m.shape, m.data["levels"], "inputs")
        labels = [None] * len(x) if labels is None else labels
        if len(labels) != len(x):
            raise InvalidInput(f"labels: give one per input ({len(x)}), or none", field="labels")
        if m.is_sequence:
            self._check_score_values(m, cap, [len(xi) for xi in x], labels)
        if cap.get("method") == "critic" and "label" in m.function_inputs(cap["function"]) and None in labels:
            raise InvalidInput(f"labels: model {name!r} is a conditional critic: give one label per input "
                               "(a critic's outputs cannot be summed over classes as likelihoods can)", field="labels")
        log_joint = None  # [B, classes], when the detector needs the classes
        if "noise" in cap:  # one draw of a stochastic estimate (a flow's dequantization), from the seed
            if any(label is not None for label in labels):
                raise no_labels(name)
            feeds = {"x": x, **latent.draw(cap["noise"], procedures.row_generators(seed, len(x)))}
            log_p = (await self._caller(m)(cap["function"], feeds))["log_prob"]
        elif "class" in anomaly.components(detector) and all(label is None for label in labels):
            log_joint = await self._class_log_joint(m, cap, x)  # the marginal from the same rows
            log_p = np.logaddexp.reduce(log_joint, axis=1)
        else:
            log_p = await self._log_prob(m, cap, x, labels)
        sizes = [len(xi) if m.is_sequence else math.prod(m.shape) for xi in x]
        results = [self._score_result(m, cap, float(lp), size) for lp, size in zip(log_p, sizes, strict=True)]
        if "is_lower_bound" in cap:
            for result in results:
                result["is_lower_bound"] = cap["is_lower_bound"]
        if "log_partition" in cap:  # log p = -F(x) - log Z, with log Z estimated at export
            for result in results:
                result.update(stderr=cap["log_partition_stderr"], is_lower_bound=False,
                              free_energy=-result["log_likelihood_nats"] - cap["log_partition"])
        return await self._detect(m, cap, x, labels, results, detector, log_joint, seed)

    def _score_limits(self, m: LoadedModel, cap: dict) -> tuple[int, int]:
        """(values per input, rows x values per request) a sequence model's direct score takes: the score capability's
        own `max_length` and `max_row_steps` where its manifest entry sets them; else the longest sequence the model
        generates (its sample capability's max_length) and its samples x values (max_row_steps), neither over
        MAX_SEQUENCE_LENGTH. Scoring a value costs one parallel pass where sampling it costs a step, so the
        sample's budget bounds the time; the setting bounds the memory, which grows with the values scored at once."""
        sample, most = m.capabilities.get("sample", {}), self.settings.max_sequence_length
        return (cap.get("max_length", min(sample.get("max_length", most), most)),
                cap.get("max_row_steps", min(sample.get("max_row_steps", most), most)))

    def _batch_values(self, m: LoadedModel, function: str) -> float:
        """The most values one batch of the model's `function` may hold: a directly scored sequence model's score
        functions take one request's limit (rows x values), so that merged requests never run beyond what one
        request may (the batcher keeps the others for its next batch); other functions have no such limit."""
        cap = m.capabilities.get("score", {})
        if m.scores_values and function in (cap.get("function"), cap.get("conditional_function")):
            return self._score_limits(m, cap)[1]
        return math.inf

    def _check_score_values(self, m: LoadedModel, cap: dict, lengths: list[int], labels: list[int | None]) -> None:
        """Refuse, before any work, a sequence score over the model's limits (validation.check_sequence_work). An
        input without a label of a model whose score takes one runs once per class (its exact marginal), so it
        counts once per class."""
        classes = len(m.data["classes"]) if "label" in m.function_inputs(cap["function"]) else 1
        repeats = [1 if label is not None else classes for label in labels]
        marginal = f" (x {classes} classes for each input without a label: its exact marginal scores every " \
            "class)" if classes > 1 and None in labels else ""
        check_sequence_work(lengths, repeats, self._score_limits(m, cap), m.manifest["name"], "inputs", "inputs[{}]",
                            marginal)

    def _detector(self, m: LoadedModel, cap: dict, anomaly_method: str | None) -> str:
        """The anomaly detector a request names, or InvalidInput if the model cannot answer it; else the model's
        default, which can always answer (LoadedModel refuses a manifest whose default could not:
        anomaly.default_problem) unless its background model is not served: then the base detector answers, and
        the answer's `method` says so."""
        names = anomaly.available(m.manifest, cap, m.function_inputs, self._has_background(m))
        if anomaly_method is not None and len(anomaly_method) > ANOMALY_METHOD_MAX:
            raise InvalidInput(f"anomaly_method: at most {ANOMALY_METHOD_MAX} characters, got {len(anomaly_method)}; "
                               f"name one of {names}", field="anomaly_method")
        if anomaly_method is None:
            default = anomaly.default_detector(m.manifest)
            return default if default in names else anomaly.base_detector(m.manifest)
        if anomaly_method in names:
            return anomaly_method
        missing = anomaly.uncalibrated_parts(m.manifest, anomaly_method)
        parts = f" (no calibration entry for {missing})" if anomaly.combination(anomaly_method) and missing else ""
        raise InvalidInput(f"anomaly_method: model {m.manifest['name']!r} has no calibrated detector "
                           f"{anomaly_method!r}{parts}; name one of {names}", field="anomaly_method")

    async def _calibrated_bound(self, m: LoadedModel, cap: dict, x: np.ndarray, results: list[dict], detector: str,
                                seed: int) -> None:
        """Where the detector's calibration entry records the bound it was calibrated at (k, method; no refinement)
        and the request asked for another, set each result's base `anomaly` (whose score the NLL-based detectors
        read) from that bound at the request's seed; the log-likelihood stays the request's."""
        settings = anomaly.bound_settings(anomaly.calibration_entry(m.manifest, detector))
        asked = (results[0]["k"], results[0]["method"], results[0]["refine_steps"])
        if settings is None or asked == (*settings, 0) or not anomaly.reads_nll(detector):
            return
        k, method = settings
        self._check_work(m, cap, len(x), k, "inputs", "inputs x the anomaly detector's calibrated k")
        for result, calibrated in zip(results, await self._score_bound(m, cap, x, method, k, 0, seed), strict=True):
            result["anomaly"] = calibrated["anomaly"]

    def _has_background(self, m: LoadedModel) -> bool:
        """Whether the model its likelihood ratio names is served, scores a likelihood, and reads the same data."""
        other = self.models.get(anomaly.background(m.manifest))
        return other is not None and "score" in other.capabilities and \
            other.capabilities["score"].get("method") != "critic" and \
            all(other.data.get(key) == m.data.get(key) for key in ("kind", "shape", "levels"))

    async def _class_log_joint(self, m: LoadedModel, cap: dict, x: np.ndarray) -> np.ndarray:
        """log p(x | y) + log p(y) for every input and class: [B, classes]."""
        log_prior = np.log(np.asarray(m.data["class_prior"], np.float64))
        function = cap.get("conditional_function", cap["function"])
        classes = len(log_prior)
        out = await self._batcher(m, function).submit({"x": np.repeat(x, classes, axis=0),
                                                       "label": np.tile(np.arange(classes, dtype=np.int64), len(x))})
        return next(iter(out.values())).astype(np.float64).reshape(len(x), classes) + log_prior

    async def _reconstruction(self, m: LoadedModel, x: np.ndarray) -> np.ndarray:
        """A BiGAN's encoder-decoder reconstruction error per input: mean squared error on 0..1 intensities
        (encode's mean, decoded)."""
        z = (await self._batcher(m, "encode").submit({"x": x}))["mean"]
        mean = (await self._batcher(m, "decode").submit({"z": z}))["mean"].astype(np.float64)
        scale = m.data["levels"] - 1
        return (((mean - x) / scale) ** 2).reshape(len(x), -1).mean(axis=1)  # decode: the levels' scale

    async def _inversion(self, m: LoadedModel, x: np.ndarray, seed: int) -> np.ndarray:
        """The cross-fitted inversion residual per input [B] (anomaly.inversion_residual): x completed by the model's
        latent search once per mask of anomaly.inversion_masks, both searches from the seed's noise: at once (one
        merged call) when their 2 x B rows fit the queue, else one after the other (B may be up to the queue's size)."""
        masks = anomaly.inversion_masks(m.shape)

        def search(mask: np.ndarray):  # -> [B, 1 (n), *shape]
            return self.complete(m.manifest["name"], x, mask, 1, seed, 1.0)

        if 2 * len(x) <= self._batching(m).max_queue_size:
            completed = await together(map(search, masks))
        else:
            completed = [await search(mask) for mask in masks]
        return anomaly.inversion_residual(x, np.stack(completed)[:, :, 0], m.data["levels"])  # [2, B, 1 (n), *shape]

    async def _hierarchy_log_weights(self, m: LoadedModel, cap: dict, x: np.ndarray, k: int,
                                     seed: int) -> np.ndarray:
        """The hierarchy function's k log-weights per input, [B, k, layers], under the noise that `seed` gives
        the served bound too: column 0 is that bound's."""
        self._check_work(m, cap, len(x), k, "inputs", "inputs x the hierarchical ratio's k")
        log_weight = {"function": cap["hierarchy"]["function"], "noise": cap["noise"]}
        request = worker_procedures.bound_request(log_weight, None, k, procedures.row_generators(seed, len(x)))
        return (await self._in_worker(m, request, {"x": x}))["log_weight"]

    async def _detect(self, m: LoadedModel, cap: dict, x, labels, results: list[dict], detector: str,
                      log_joint: np.ndarray | None = None, seed: int = 0) -> list[dict]:
        """Replace each result's `anomaly` with the detector's answer (the base detector's is already there)."""
        calibration = m.manifest["calibration"]
        if detector == anomaly.base_detector(m.manifest):
            for result in results:
                result["anomaly"]["method"] = detector
            return results
        nll = np.array([r["anomaly"]["score"] for r in results])  # per input (sequences: per value)
        if detector == "typicality":
            answers = anomaly.typicality_answer(nll, calibration)
        else:
            features = {"nll": nll, "critic": np.array([r.get("critic") or 0.0 for r in results])}
            parts = anomaly.components(detector)
            if "complexity" in parts:
                features["png_bits"] = anomaly.png_bits(x, m.data["levels"])
            if "class" in parts:
                features["log_joint"] = log_joint if log_joint is not None else await self._class_log_joint(m, cap, x)
            if "reconstruction" in parts:
                features["reconstruction"] = await self._reconstruction(m, x)
            if "likelihood_ratio" in parts:
                features["background_nll"] = await self._background_nll(m, cap, x, detector)
            if "hierarchical_ratio" in parts:  # at the k and method it was calibrated with
                skip, k, method = anomaly.hierarchy_options(m.manifest)
                log_w = await self._hierarchy_log_weights(m, cap, x, k, seed)
                features["hierarchical_ratio"] = anomaly.hierarchical_ratio(log_w, method, skip)
            if "latent_mahalanobis" in parts:
                mean, std = await self._encode(m, x, 0, procedures.row_generators(seed, len(x)))  # noise: seed
                features["latent_mahalanobis"] = anomaly.latent_mahalanobis(mean, std, m.latent_gaussian)
            if "inversion" in parts:
                features["inversion"] = await self._inversion(m, x, seed)
            entry = anomaly.calibration_entry(m.manifest, detector)
            answers = anomaly.answer(detector, entry, calibration["threshold_quantile"],
                                     anomaly.per_input_scores(detector, features, entry))
        for result, answer in zip(results, answers, strict=True):
            result["anomaly"] = answer
        return results

    async def _background_nll(self, m: LoadedModel, cap: dict, x, detector: str) -> np.ndarray:
        """The background model's own NLL per input (sequences: per value), at its latest version; BackgroundGone
        where it went since the detector was chosen."""
        name = anomaly.background(m.manifest)
        try:
            background = await self.score(name, x, anomaly_method="nll")
        except UnknownModel as e:  # unloaded, or its files gone or changed (VersionGone)
            names = anomaly.available(m.manifest, cap, m.function_inputs)
            raise BackgroundGone(f"anomaly_method: model {m.manifest['name']!r}'s detector {detector!r} needs its "
                                 f"background model {name!r}, which is not available now (unloaded, or its files in "
                                 f"the store gone or changed); name one of {names}", field="anomaly_method") from e
        return np.array([r["anomaly"]["score"] for r in background])

    async def _log_prob(self, m: LoadedModel, cap: dict, x, labels: list[int | None]) -> np.ndarray:
        """log p(x) per input; sequence models batch inputs of equal length together."""
        if not m.is_sequence:
            return await self._log_prob_batch(m, cap, x, labels)
        by_length: dict[int, list[int]] = {}
        for b, xi in enumerate(x):
            by_length.setdefault(len(xi), []).append(b)
        groups = list(by_length.values())
        parts = await together(
            self._log_prob_batch(m, cap, np.stack([x[b] for b in group]), [labels[b] for b in group])
            for group in groups)
        log_p = np.empty(len(x))
        for group, part in zip(groups, parts, strict=True):
            log_p[group] = part
        return log_p

    async def _log_prob_batch(self, m: LoadedModel, cap: dict, x: np.ndarray, labels: list[int | None]) -> np.ndarray:
        length = x.shape[1] if m.is_sequence else None
        given = np.array([lab is not None for lab in labels])
        classes = len(m.data.get("classes", []))
        if given.any():
            label = np.array([lab for lab in labels if lab is not None], np.int64)
            if "label" not in m.function_inputs(cap.get("conditional_function", cap["function"])):
                raise no_labels(m.manifest["name"])
            if label.min() < 0 or label.max() >= classes:
                raise InvalidInput(f"labels: each must be in 0..{classes - 1}, got {int(label.min())}.."
                                   f"{int(label.max())}", field="labels")
        if "label" in m.function_inputs(cap["function"]):
            return await self._log_prob_over_labels(m, cap["function"], x, labels, length)
        log_p = np.empty(len(x))
        if (~given).any():
            out = await self._batcher(m, cap["function"], length=length).submit({"x": x[~given]})
            log_p[~given] = next(iter(out.values()))
        if given.any():
            out = await self._batcher(m, cap["conditional_function"], length=length).submit(
                {"x": x[given], "label": label})
            log_p[given] = next(iter(out.values()))
        return log_p

    async def _log_prob_over_labels(self, m: LoadedModel, function: str, x: np.ndarray, labels: list[int | None],
                                    length: int | None) -> np.ndarray:
        """log p(x | y) where the label is given; else the exact marginal log sum_y p(y) p(x | y) over every class."""
        log_prior = np.log(np.asarray(m.data["class_prior"], np.float64))
        rows = [(b, y) for b, lab in enumerate(labels) for y in ([lab] if lab is not None else range(len(log_prior)))]
        index, label = np.array([b for b, _ in rows]), np.array([y for _, y in rows], np.int64)
        out = await self._batcher(m, function, length=length).submit({"x": x[index], "label": label})
        log_p_given = next(iter(out.values())).astype(np.float64)  # [rows]
        log_p = np.empty(len(x))
        for b, lab in enumerate(labels):
            mine = index == b
            log_p[b] = log_p_given[mine][0] if lab is not None else \
                np.logaddexp.reduce(log_p_given[mine] + log_prior[label[mine]])
        return log_p

    def _score_result(self, m: LoadedModel, cap: dict, log_p: float, size: int) -> dict:
        """The score of one input of `size` values; text and audio calibrate per value, images per input.

        A critic's output (method "critic": a GAN's discriminator) is no likelihood: it is reported as
        `critic`, with the negative critic as the anomaly score, and no log-likelihood."""
        if cap.get("method") == "critic":
            return {"critic": log_p, "log_likelihood_nats": None, "bits_per_dim": None, "method": "critic",
                    "anomaly": self._anomaly(m, -log_p)}
        nll = -log_p
        score = nll / size if m.is_sequence else nll
        per_value = {f"{unit}_per_{UNITS[m.data['kind']]}": nll / size / scale
                     for unit, scale in (("nats", 1.0), ("bits", math.log(2)))} if m.is_sequence else {}
        return {
            "log_likelihood_nats": log_p,
            "bits_per_dim": nll / (size * math.log(2)),
            **per_value,  # text: nats_per_char, bits_per_char; audio: nats_per_sample, bits_per_sample
            "method": cap.get("method", "exact"),
            "anomaly": self._anomaly(m, score),
        }

    @staticmethod
    def _anomaly(m: LoadedModel, score: float) -> dict:
        """A score's percentile among the held-out scores of the manifest's calibration, and the flag."""
        calibration = m.manifest["calibration"]
        percentile = float(np.interp(score, calibration["values"], calibration["quantiles"])) * 100.0
        return {"score": score, "score_kind": calibration["score"], "percentile": percentile,
                "is_anomaly": percentile >= calibration["threshold_quantile"] * 100.0}

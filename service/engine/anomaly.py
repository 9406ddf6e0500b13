"""Anomaly detectors: one contract, several scores. Every detector maps an input to a score where higher is more
anomalous; its percentile is read off held-out in-distribution quantiles in the manifest's calibration.

Per-input detectors (from what the engine computes for the input):
- `nll`: the negative log-likelihood (nats per image; per character or per sample for sequences); a critic
  model's `critic` detector is the negated critic output instead.
- `typical_nll`: Nalisnick et al. 2019's typicality statistic for a batch of one input, |NLL - H|, H the mean NLL
  of the training digits (the calibration entry's `center`, at the entry's bound): an input is anomalous when the
  model finds it far less likely than a typical digit, or far more likely (a blank or smooth image, which a
  likelihood model may rate above any digit), so a more anomalous input scores higher either way.
- `complexity`: Serrà et al. 2020, NLL in bits minus the bits of the input's PNG (images only).
- `class`: for class-conditional models, -log max_y p(y | x) = log p(x) - log max_y p(x | y) p(y) >= 0: how much
  the marginal exceeds the best single class's explanation of x; 0 when one class explains x fully.
- `reconstruction`: a BiGAN's encoder-decoder reconstruction, mean squared error per pixel on 0..1 intensities.
- `inversion`: AnoGAN's residual (Schlegl et al. 2017, "Unsupervised Anomaly Detection with Generative Adversarial
  Networks") for a model whose `complete` capability is a direct latent search (a GAN's): find z whose G(z) best
  matches x, score the mismatch. `complete` keeps observed pixels exactly, so with every pixel observed its residual
  would be 0; the residual is cross-fitted instead: complete x observed on a checkerboard's black squares, then on
  its white ones (inversion_masks), and read each pixel from the search that did not see it (inversion_residual):
  mean squared error per pixel on 0..1 intensities, each search started from the request's seeded noise z (row b
  of both searches: input b's generator).
- `likelihood_ratio`: Ren et al. 2019, "Likelihood Ratios for Out-of-Distribution Detection": the NLL minus the
  NLL of a background model, -(log p(x) - log p_background(x)). The calibration entry names the background model
  (`"background": "<model name>"`), any model of the store with the same data spec that scores a likelihood
  (shipped: small-receptive-field PixelCNNs trained on perturbed training digits, which model the local
  statistics the two share, so that the ratio keeps what only the full model knows).
- `hierarchical_ratio`: Havtorn et al. 2021, "Hierarchical VAEs Know What They Don't Know": LLR^{>k} = L - L^{>k},
  the model's importance-sampled bound minus the bound where its k lowest latent layers are drawn from their
  conditional prior given the layers above instead of inferred from x; high when only the low-level latents (local
  statistics, which generalize to any image) explain x, so a more anomalous input scores higher (the paper's
  sign: OOD has the larger LLR). For a model whose score capability names a `hierarchy` function (`log_weight`
  [B, layers]: column k the log-weight with the k lowest layers from the prior, column 0 the full bound's). Both
  bounds come from the same noise draws (the request's seed), with the calibration entry's `skip` (k), and its
  `k` draws and `method` (iwae or elbo) whatever the request's own, so that scores and held-out quantiles agree;
  L is then the bound the model serves at that seed, k and method.
- `latent_mahalanobis`: Lee et al. 2018's Mahalanobis score, in the model's latent space: the Mahalanobis distance
  of the encoder's posterior (its `encode` function's mean, and log std where the encoder is stochastic; noise from
  the request's seed) from a Gaussian fitted to the training digits' posteriors (mean, and covariance plus a small
  ridge: the calibration entry's `latent`, `{"features", "n", "ridge", "file"}`, whose `file` (LATENT_FILE, listed
  with its sha256 in the manifest's files and verified by the store like any artifact file) holds its `mean` [F] and
  `precision` [F, F] in float32). For a model whose manifest has an `encode` function with a `mean` output of a
  fixed size (the VAEs, the BiGAN, the flows, whose z is as large as x).
- `mix:<a>+<b>...`: the sum of the named detectors' scores, each standardized by a mean and standard deviation
  stored in the calibration entry (fit on the choice data, never on the calibration data), beside any parameter the
  part's score needs (`typical_nll`'s `center`); served only where each part has its own calibration entry too.
- `states:<a>+<b>...`: Morningstar et al. 2021's density of states (DoSE), "Density of States Estimation for
  Out-of-Distribution Detection": the named detectors' scores are the model's summary statistics of x; each is
  standardized (the entry's `states`, as a mix's `mix`) and the score is the squared Mahalanobis distance z' P z of
  the standardized vector z [F] from the training digits', P the precision of their standardized scores (the entry's
  `precision` [F, F], parts in the name's order). Unlike a sum it is two-sided in every statistic: an input the
  model finds far *more* likely than any training digit (a smooth or blank image) is as atypical as one it finds
  far less likely. Both are fitted on training digits that no other step uses; served where each part is
  calibrated alone, as a mix's.

Batch detector:
- `typicality`: Nalisnick et al. 2019's typicality test over a request's inputs: the statistic |mean NLL - H|,
  H the mean held-out NLL, with one p-value for the batch from the held-out NLL distribution (the calibration
  quantile function) by seeded Monte Carlo. Every input of the batch carries the same answer.

The calibration of the manifest keeps its top-level entry (the model's first score, `nll` or `critic`); further
detectors sit in `calibration["detectors"][name]` (score, quantiles, values, n, split; a mix's `mix`
standardization; the likelihood ratio's `background`; the hierarchical ratio's `skip`; the latent Mahalanobis
score's `latent`; typical_nll's `center`; a density of states' `states` standardization, its `precision` and `fit_n`,
the training digits both were fitted on), and
`calibration["default"]` names the detector that answers when a request names none; a default that could never
answer (a part the model cannot compute or without a calibration entry of its own, a combination without its own
entry) or a combination entry that could not score (a part's standardization missing or flat, a precision of the
wrong size) is an exporter's mistake that the engine refuses when it loads the model (calibration_problem), naming
the model and the part.

A model scored by an importance-sampled bound (IWAE_k rises with k) records in each entry the bound its held-out
scores were computed with, `k` and `method` (no refinement): every detector of that entry, typicality included on
the top-level one, scores the bound at those settings from the request's seed, whatever the request's own k, method
and refine_steps, so that its scores and quantiles agree. The answer's log-likelihood stays the bound the request
asked for (the same numbers where the settings agree). An entry without them scores the request's bound.
"""

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from service.engine import latent

TYPICALITY_DRAWS = 4000
TYPICALITY_SEED = 17
QUANTILE_METHOD = "weibull"  # numpy's name for the quantile at rank q (n + 1): calibration_for
LATENT_RIDGE = 1e-3  # added to the latent covariance's diagonal, times its mean variance
STATES_RIDGE = 1e-3  # added to the diagonal of the standardized scores' covariance (variances about 1)
# latent_mahalanobis's Gaussian, beside the manifest: its precision [F, F] in float32 is 2.5 MB for a flow's 784
# features (its encoder is deterministic: the mean alone), not the 22 MB of JSON lists the manifest would parse
LATENT_FILE = "latent_gaussian.safetensors"


def png_bits(x: np.ndarray, levels: int) -> np.ndarray:
    """L(x) of x [B, 1, H, W]: bits of each image's PNG at maximum compression (8-bit gray, 1-bit if binary)."""
    def bits(image: np.ndarray) -> int:
        buffer = io.BytesIO()
        pixels = image.astype(bool) if levels == 2 else image.astype(np.uint8)
        Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
        return 8 * len(buffer.getvalue())

    return np.array([bits(image[0]) for image in x], np.float64)


def base_detector(manifest: dict) -> str:
    """The detector of the top-level calibration entry: `critic` for a critic's negated output, else `nll`."""
    return "critic" if manifest["calibration"]["score"] == "negative_critic" else "nll"


def default_detector(manifest: dict) -> str:
    return manifest["calibration"].get("default", base_detector(manifest))


def calibration_entry(manifest: dict, detector: str) -> dict | None:
    calibration = manifest["calibration"]
    if detector == base_detector(manifest) or detector == "typicality":
        return calibration
    return calibration.get("detectors", {}).get(detector)


COMBINATIONS = {"mix:": "mix", "states:": "states"}  # a combination's prefix -> its entry's key for the parts


def combination(detector: str) -> str | None:
    """The entry key of a combination's parts' standardization ("mix", "states"), or None for a single detector."""
    return next((key for prefix, key in COMBINATIONS.items() if detector.startswith(prefix)), None)


def components(detector: str) -> list[str]:
    """The per-input detectors a detector needs: itself, or a combination's parts."""
    return detector.split(":", 1)[1].split("+") if combination(detector) else [detector]


def calibrated_detectors(manifest: dict) -> set[str]:
    """The detectors with a calibration entry: the base detector's is the top-level one, the others' sit in
    `detectors`."""
    return {base_detector(manifest)} | set(manifest["calibration"].get("detectors", {}))


def uncalibrated_parts(manifest: dict, detector: str) -> list[str]:
    """The parts of a detector (itself, or a combination's parts) without a calibration entry of their own: a
    combination is served only when each part is calibrated alone, which also holds what a part computes from (the
    latent Mahalanobis score's Gaussian, the hierarchical ratio's skip, the likelihood ratio's background)."""
    calibrated = calibrated_detectors(manifest)
    return [part for part in components(detector) if part not in calibrated]


def background(manifest: dict) -> str | None:
    """The model that supplies the likelihood ratio's background term, as the calibration names it."""
    return manifest["calibration"].get("detectors", {}).get("likelihood_ratio", {}).get("background")


def bound_settings(entry: dict) -> tuple[int, str] | None:
    """(k, method) of the importance-sampled bound a calibration entry's held-out scores come from; None where the
    entry records none (then the request's bound is scored)."""
    return (entry["k"], entry["method"]) if "k" in entry else None


def reads_nll(detector: str) -> bool:
    """Whether the detector's score is computed from the model's NLL (the hierarchical ratio computes its own
    bounds)."""
    return bool({"nll", "typical_nll", "complexity", "likelihood_ratio", "typicality"} & set(components(detector)))


def hierarchy_options(manifest: dict) -> tuple[int, int, str]:
    """The hierarchical ratio's (skip, k, method): how many of the lowest latent layers its second bound draws from
    the prior, and the draws and method of both bounds, as calibrated."""
    entry = manifest["calibration"]["detectors"]["hierarchical_ratio"]
    return entry["skip"], entry["k"], entry["method"]


def latent_features(mean: np.ndarray, std: np.ndarray, parts: list[str]) -> np.ndarray:
    """q(z | x)'s mean and std [B, D] each -> the features [B, F] that `parts` names, in order: "mean", "log_std"."""
    features = [mean if part == "mean" else np.log(std) for part in parts]  # a deterministic encoder's: no log std
    return np.concatenate([np.asarray(f, np.float64) for f in features], axis=1)


def latent_gaussian(mean: np.ndarray, std: np.ndarray, ridge: float = LATENT_RIDGE) -> dict:
    """The training digits' posterior means and stds [N, D] each -> the fitted Gaussian (its file's float32 arrays:
    latent_arrays; the entry's `latent` that names the file: latent_entry): which features it measures (the
    mean, and the log std where the encoder is stochastic: a deterministic encoder's std is 0), their mean [F], and
    the precision [F, F] of their covariance plus ridge x its mean variance on the diagonal."""
    parts = ["mean", "log_std"] if (np.asarray(std) > 0).all() else ["mean"]
    f = latent_features(mean, std, parts)
    covariance = np.cov(f, rowvar=False)
    covariance += ridge * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.inv(covariance)
    return {"features": parts, "mean": f.mean(axis=0), "precision": (precision + precision.T) / 2, "n": len(f),
            "ridge": ridge}


def latent_mahalanobis(mean: np.ndarray, std: np.ndarray, gaussian: dict) -> np.ndarray:
    """q(z | x)'s mean and std [B, D] each -> sqrt((f - mu)^T precision (f - mu)) [B] of their features f: 0 at the
    training digits' mean mu, higher farther from it. `gaussian`: a fit (latent_gaussian) or the served one
    (fitted_latent_gaussian), its mean and precision arrays read as float64."""
    d = latent_features(mean, std, gaussian["features"]) - np.asarray(gaussian["mean"], np.float64)
    squared = np.einsum("bi,ij,bj->b", d, np.asarray(gaussian["precision"], np.float64), d)
    return np.sqrt(np.maximum(squared, 0.0))


def latent_arrays(gaussian: dict) -> dict[str, np.ndarray]:
    """A fitted Gaussian's mean [F] and precision [F, F] as its file keeps them and the service scores with them:
    float32 (scores within 1e-5 relative of float64's for a flow's 784 features: tests)."""
    return {key: np.asarray(gaussian[key], np.float32) for key in ("mean", "precision")}


def latent_entry(gaussian: dict) -> dict:
    """The calibration entry's `latent` for a fitted Gaussian whose arrays (latent_arrays) are written to LATENT_FILE
    in the model's directory: what it measures and how it was fitted, and the file's name."""
    return {"features": list(gaussian["features"]), "n": gaussian["n"], "ridge": gaussian["ridge"], "file": LATENT_FILE}


def fitted_latent_gaussian(manifest: dict, directory: Path) -> dict | None:
    """The Gaussian of the training digits' posteriors that the latent Mahalanobis score measures from, its mean [F]
    and precision [F, F] as float64 arrays, read from its file in the model's `directory`: the engine reads it once
    when it loads the model (LoadedModel), after the store checked the file's sha256. None where the manifest
    calibrates no latent Mahalanobis score; ValueError where the file's arrays do not fit the features it names."""
    entry = manifest.get("calibration", {}).get("detectors", {}).get("latent_mahalanobis")
    if entry is None:
        return None
    latent = entry["latent"]
    arrays = load_file(str(Path(directory) / latent["file"]))
    size = len(latent["features"]) * latent_dim(manifest)  # F
    shapes = {key: list(np.shape(arrays.get(key))) for key in ("mean", "precision")}
    if shapes != {"mean": [size], "precision": [size, size]}:
        raise ValueError(f"{latent['file']} holds {shapes}, not the {size} features its latent_mahalanobis entry "
                         f"measures (mean [{size}], precision [{size}, {size}])")
    return {"features": list(latent["features"]), "mean": np.asarray(arrays["mean"], np.float64),
            "precision": np.asarray(arrays["precision"], np.float64)}


def hierarchical_ratio(log_w: np.ndarray, method: str, skip: int) -> np.ndarray:
    """log_w [B, k, layers] (the hierarchy function's log-weights, k draws) -> L - L^{>skip} [B], both bounds
    (elbo or iwae) from the same draws; skip 0 gives exactly 0."""
    if not 0 <= skip < log_w.shape[2]:
        raise ValueError(f"skip {skip}: the model has {log_w.shape[2]} latent layers")
    return latent.bound(log_w[:, :, 0], method)[0] - latent.bound(log_w[:, :, skip], method)[0]


def computable(manifest: dict, capability: dict, function_inputs, has_background: bool = False) -> set[str]:
    """The detectors this model's functions compute (the likelihood ratio: when its background model is served),
    calibrated or not."""
    if capability.get("method") == "critic":
        detectors = {"critic"} | ({"reconstruction"} if {"encode", "decode"} <= set(manifest["functions"]) else set())
    else:
        detectors = {"nll", "typical_nll", "typicality"}
        image = manifest["data"]["kind"] == "image"
        if image:
            detectors.add("complexity")
        if has_background:
            detectors.add("likelihood_ratio")
        if "hierarchy" in capability:
            detectors.add("hierarchical_ratio")
        conditional = capability.get("conditional_function", capability["function"])
        if manifest["data"].get("class_prior") and conditional in manifest["functions"] \
                and "label" in function_inputs(conditional) and capability["procedure"] == "direct" \
                and "noise" not in capability:
            detectors.add("class")
    if latent_dim(manifest) > 0:
        detectors.add("latent_mahalanobis")
    if inverts(manifest):
        detectors.add("inversion")
    return detectors


def latent_dim(manifest: dict) -> int:
    """The size of the latent that the model's `encode` function's `mean` output gives per input (0: no encode
    function, no such output, or a size not fixed in the manifest)."""
    encode = manifest["functions"].get("encode", {"outputs": []})
    mean = next((o for o in encode["outputs"] if o["name"] == "mean"), None)
    return max(mean["shape"][-1], 0) if mean is not None and mean["shape"] else 0


def available(manifest: dict, capability: dict, function_inputs, has_background: bool = False) -> list[str]:
    """Every detector this model can answer: computable, and calibrated (typicality rides on the `nll`
    calibration; a combination: each part too)."""
    can = computable(manifest, capability, function_inputs, has_background)
    calibrated = calibrated_detectors(manifest)
    names = [d for d in sorted(can) if d == "typicality" or d in calibrated]
    names += [d for d in sorted(manifest["calibration"].get("detectors", {}))
              if combination(d) and set(components(d)) <= can and not uncalibrated_parts(manifest, d)]
    return names


def default_problem(manifest: dict) -> str | None:
    """Why the manifest's `calibration.default` could never answer, or None: a part the model cannot compute, a
    part without a calibration entry of its own, or a combination without its own entry or one that could not score
    (combination_problem). An
    exporter's mistake, refused when the engine loads the model (a default whose background model is not served
    is none: the service falls back to the base detector and says so)."""
    default = manifest.get("calibration", {}).get("default")
    if default is None or "score" not in manifest["capabilities"]:
        return None
    parts = components(default)
    cannot = sorted(set(parts) - computable(manifest, manifest["capabilities"]["score"], lambda function: [
        tensor["name"] for tensor in manifest["functions"][function]["inputs"]], has_background=True))
    missing = [] if default == "typicality" else uncalibrated_parts(manifest, default)  # typicality: nll's entry
    if cannot:
        return f"default anomaly detector {default!r}: the model cannot compute {cannot}"
    if missing:
        return f"default anomaly detector {default!r}: no calibration entry for {missing} in calibration.detectors"
    if combination(default) is None:
        return None
    entry = manifest["calibration"].get("detectors", {}).get(default)
    if entry is None:
        return f"default anomaly detector {default!r}: no calibration entry of its own in calibration.detectors"
    problem = combination_problem(default, entry)
    return None if problem is None else f"default anomaly detector {default!r}: {problem}"


def combination_problem(detector: str, entry: dict) -> str | None:
    """Why a combination's own entry could not score, or None: a part without its standardization, a density of
    states' precision that is not F x F (the manifest schema holds each standardization to a number mean and a
    positive std)."""
    key, parts = combination(detector), components(detector)
    unstandardized = [part for part in parts if part not in entry.get(key, {})]
    if unstandardized:
        return f"its entry has no `{key}` standardization for {unstandardized}"
    if key == "states" and np.shape(entry.get("precision")) != (len(parts), len(parts)):
        return f"its entry's `precision` must be {len(parts)} x {len(parts)}"
    return None


def calibration_problem(manifest: dict) -> str | None:
    """default_problem, else the first combination entry of `calibration.detectors` that could not score
    (combination_problem): an exporter's mistake the engine refuses when it loads the model, not a 500 when a
    request names that detector."""
    if (problem := default_problem(manifest)) is not None:
        return problem
    for detector, entry in manifest.get("calibration", {}).get("detectors", {}).items():
        if combination(detector) and (problem := combination_problem(detector, entry)) is not None:
            return f"anomaly detector {detector!r}: {problem}"
    return None


def inversion_masks(shape: list[int]) -> np.ndarray:
    """The two complementary observation masks [2, *shape] (1 = observed) of the cross-fitted inversion: a
    checkerboard over the last two axes and its complement."""
    rows, cols = np.indices(shape[-2:])
    board = np.broadcast_to((rows + cols) % 2, shape).astype(np.int64)
    return np.stack([board, 1 - board])


def inversion_residual(x: np.ndarray, completed: np.ndarray, levels: int) -> np.ndarray:
    """x [B, *shape] levels, completed [2, B, *shape] (x completed from inversion_masks' first and second mask) ->
    [B] mean squared error on 0..1 intensities of each pixel against the completion that did not observe it."""
    masks = inversion_masks(list(x.shape[1:]))[:, None]  # [2, 1, *shape]
    unseen = np.where(masks[0] == 1, completed[1], completed[0]).astype(np.float64)  # each pixel from the other
    return (((unseen - x) / (levels - 1)) ** 2).reshape(len(x), -1).mean(axis=1)


def inverts(manifest: dict) -> bool:
    """Whether the model completes an image by one direct latent search from noise alone (an unconditional GAN's
    `complete`; a conditional one's would need a label that a score request does not give): what `inversion`
    needs."""
    complete = manifest["capabilities"].get("complete", {})
    if manifest["data"]["kind"] != "image" or complete.get("procedure") != "direct":
        return False
    return "label" not in [tensor["name"] for tensor in manifest["functions"][complete["function"]]["inputs"]]


def class_score(log_joint: np.ndarray) -> np.ndarray:
    """log_joint [B, C] = log p(x | y) + log p(y) -> -log max_y p(y | x) = logsumexp_y - max_y (>= 0)."""
    log_joint = np.asarray(log_joint, np.float64)
    return np.logaddexp.reduce(log_joint, axis=1) - log_joint.max(axis=1)


def per_input_scores(detector: str, features: dict[str, np.ndarray], entry: dict | None) -> np.ndarray:
    """A per-input detector's scores from the computed features (nll, critic, png_bits, log_joint, reconstruction,
    background_nll, hierarchical_ratio, latent_mahalanobis, inversion) and the parameters of its entry (a
    combination's part: the part's standardization, which carries them too)."""
    if detector == "nll":
        return np.asarray(features["nll"], np.float64)
    if detector == "typical_nll":
        return np.abs(np.asarray(features["nll"], np.float64) - entry["center"])
    if detector == "critic":
        return -np.asarray(features["critic"], np.float64)
    if detector == "complexity":
        return np.asarray(features["nll"], np.float64) / math.log(2) - features["png_bits"]
    if detector == "class":
        return class_score(features["log_joint"])
    if detector == "reconstruction":
        return np.asarray(features["reconstruction"], np.float64)
    if detector == "likelihood_ratio":
        return np.asarray(features["nll"], np.float64) - np.asarray(features["background_nll"], np.float64)
    if detector in ("hierarchical_ratio", "latent_mahalanobis", "inversion"):
        return np.asarray(features[detector], np.float64)
    key = combination(detector)
    if key is None:
        raise ValueError(f"unknown detector {detector!r}")
    z = standardized(components(detector), features, entry[key])  # [B, F]
    if key == "mix":
        return z.sum(axis=1)
    return np.einsum("bi,ij,bj->b", z, np.asarray(entry["precision"], np.float64), z)


def standardized(parts: list[str], features: dict[str, np.ndarray], standardization: dict) -> np.ndarray:
    """The parts' scores [B, F], each standardized by its entry's mean and std (which carry its parameters too)."""
    return np.stack([(per_input_scores(part, features, standardization[part]) - standardization[part]["mean"])
                     / standardization[part]["std"] for part in parts], axis=1)


def states_precision(z: np.ndarray, ridge: float = STATES_RIDGE) -> np.ndarray:
    """Standardized scores z [n, F] of training digits -> the precision [F, F] of the density of states: the
    inverse of their covariance plus `ridge` on the diagonal (z is standardized: its variances are about 1),
    symmetrized."""
    precision = np.linalg.inv(np.atleast_2d(np.cov(z, rowvar=False)) + ridge * np.eye(z.shape[1]))
    return (precision + precision.T) / 2


def percentile(entry: dict, scores: np.ndarray) -> np.ndarray:
    """Each score's percentile (0..100) among the held-out in-distribution scores of the calibration entry."""
    return np.interp(scores, entry["values"], entry["quantiles"]) * 100.0


def answer(detector: str, entry: dict, threshold_quantile: float, scores: np.ndarray) -> list[dict]:
    """The `anomaly` dict of each input for a per-input detector."""
    pct = percentile(entry, scores)
    return [{"method": detector, "score": float(s), "score_kind": entry["score"], "percentile": float(p),
             "is_anomaly": bool(p >= threshold_quantile * 100.0)} for s, p in zip(scores, pct, strict=True)]


def held_out_moments(entry: dict) -> tuple[float, float]:
    """Mean and standard deviation of the held-out distribution given by its quantile function."""
    q, v = np.asarray(entry["quantiles"], np.float64), np.asarray(entry["values"], np.float64)
    u = (np.arange(2000) + 0.5) / 2000
    draws = np.interp(u, q, v)
    return float(draws.mean()), float(draws.std())


def typicality_p_value(nll: np.ndarray, entry: dict, draws: int = TYPICALITY_DRAWS,
                       seed: int = TYPICALITY_SEED) -> tuple[float, float]:
    """(statistic, p-value) of the batch `nll` [B]: statistic |mean(nll) - H|, H the held-out mean; the p-value is
    the share of `draws` batches of B held-out scores (drawn from the calibration quantile function, seeded) whose
    statistic is at least as large (with the +1 of a Monte Carlo test, so never 0)."""
    nll = np.asarray(nll, np.float64)
    mean, _ = held_out_moments(entry)
    statistic = abs(float(nll.mean()) - mean)
    rng = np.random.default_rng([seed, len(nll)])
    simulated = np.interp(rng.random((draws, len(nll))), entry["quantiles"], entry["values"]).mean(axis=1)
    exceed = int(np.count_nonzero(np.abs(simulated - mean) >= statistic))
    return statistic, (exceed + 1) / (draws + 1)


def typicality_answer(nll: np.ndarray, entry: dict) -> list[dict]:
    """One answer for the whole batch, repeated on every input: percentile = 100 (1 - p)."""
    statistic, p = typicality_p_value(nll, entry)
    one = {"method": "typicality", "score": statistic, "score_kind": f"abs_mean_{entry['score']}_minus_held_out",
           "p_value": p, "percentile": 100.0 * (1.0 - p), "batch_size": len(nll),
           "is_anomaly": bool(p <= 1.0 - entry["threshold_quantile"])}
    return [dict(one) for _ in range(len(nll))]


def calibration_for(scores: np.ndarray, score_kind: str, split: str, quantiles: list[float]) -> dict:
    """A detector's calibration entry from n held-out in-distribution scores: quantile q at rank q (n + 1) of the
    sorted scores (`weibull`), where a fresh score's rank among them is uniform, so that a flag at q has false-positive
    rate 1 - q in the mean over calibrations (numpy's default rank 1 + q (n - 1) has 1.4% at 0.99 with n = 250)."""
    return {"score": score_kind, "quantiles": quantiles,
            "values": np.quantile(scores, quantiles, method=QUANTILE_METHOD).tolist(), "n": len(scores),
            "split": split, "quantile_method": QUANTILE_METHOD}


SCORE_KINDS = {"nll": "nll_nats", "typical_nll": "abs_nll_minus_training_mean_nats", "critic": "negative_critic",
               "complexity": "nll_bits_minus_png_bits",
               "class": "neg_log_max_class_posterior", "reconstruction": "reconstruction_mse",
               "likelihood_ratio": "nll_minus_background_nll_nats",
               "hierarchical_ratio": "bound_minus_bound_with_lowest_latents_from_prior_nats",
               "latent_mahalanobis": "mahalanobis_distance_of_posterior_mean",
               "inversion": "cross_fitted_inversion_mse"}
COMBINATION_KINDS = {"mix": "mix_of_standardized_scores", "states": "squared_mahalanobis_of_standardized_scores"}

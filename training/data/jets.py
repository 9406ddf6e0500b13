"""A small jet-image simulator: one-prong QCD-like jets against two-prong W-like jets (the data of de Oliveira,
Paganini & Nachman 2017, "Learning Particle Physics by Example: Location-Aware Generative Adversarial Networks
for Physics Synthesis"), in numpy, seeded. It is a toy, not Pythia; its assumptions:

- Jets have pT uniform in [250, 300] GeV along eta = phi = 0; particles are massless.
- W-like: a W of mass Breit-Wigner(80.4, 2.1) GeV, cut to [70, 90], decays isotropically in its rest frame to two
  massless quarks, boosted exactly to the lab.
- QCD-like: one parton with one hard emission at leading-log accuracy: rho = m^2 / (pT R)^2 is drawn from the
  Sudakov form P(ln 1/rho > L) = exp(-a L^2), a = alpha_s C_F / (2 pi) with alpha_s = 0.2, then the momentum
  fraction z ~ dz / z on [z_min, 1/2] and the angle that gives rho; a soft emission leaves one prong in effect.
- Each parton of pT p fragments into 2 + Poisson(5 ln p) particles with fractions Dirichlet(0.6) and transverse
  kicks k_T ~ Exp(mean 0.4 GeV) off its axis (angle k_T / (x p)); an underlying event adds Poisson(4) particles
  of pT ~ Exp(mean 0.5 GeV) uniform over the R = 1 disc. Particles outside the 25 x 25 window are lost.
- Preprocessing, as in the paper but on particles: translate so the leading subjet (the pT centroid of the
  particles within 0.3 of the hardest one) sits at the centre; rotate so the second subjet (the same, seeded by the
  hardest particle farther than 0.3) points down (phi < 0); deposit pT on the 25 x 25 grid of 0.1 x 0.1 over
  eta, phi in [-1.25, 1.25] (row 0 is phi = +1.2, column 0 is eta = -1.2); flip in eta so the right half holds
  more pT than the left.

Images hold pixel pT in GeV. The store keeps them as 256 levels on a log scale (jet images are shown that way):
level 0 is empty, level k >= 1 is pT = PT_MIN exp((k - 1) STEP) up to PT_MAX, a relative rounding of at most
STEP / 2 ~ 2.1%; pixels under ~PT_MIN are dropped. Jet mass, pT and tau21 are computed from pixels (eq. 2.1-2.3 of
the paper: each pixel a massless particle at its centre).
"""

from functools import lru_cache

import numpy as np

from training.data.images import Split

SIDE, PIXEL = 25, 0.1  # the grid and its pixel width in eta and phi
HALF = SIDE * PIXEL / 2  # 1.25: the window's half width
CENTRES = (np.arange(SIDE) - SIDE // 2) * PIXEL  # pixel centres -1.2 .. 1.2
CLASSES = ("qcd", "w")
PT_RANGE = (250.0, 300.0)
W_MASS, W_WIDTH = 80.4, 2.1
ALPHA_A = 0.2 * (4 / 3) / (2 * np.pi)  # alpha_s C_F / (2 pi)
SUBJET_R = 0.3
PT_MIN, PT_MAX, LEVELS = 0.01, 500.0, 256
STEP = np.log(PT_MAX / PT_MIN) / (LEVELS - 2)


def _w_partons(pt: float, rng: np.random.Generator) -> np.ndarray:
    """W -> q q' boosted to pT along x: [2, 3] (pT, eta, phi)."""
    m = W_MASS + W_WIDTH / 2 * np.tan(np.pi * (rng.random() - 0.5))
    while not 70 <= m <= 90:
        m = W_MASS + W_WIDTH / 2 * np.tan(np.pi * (rng.random() - 0.5))
    cos, azimuth = rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
    sin = np.sqrt(1 - cos ** 2)
    energy = np.hypot(pt, m)
    beta, gamma = pt / energy, energy / m
    star = m / 2 * np.array([[cos, sin * np.cos(azimuth), sin * np.sin(azimuth)]])  # [1, 3]: (px, py, pz)
    p = np.concatenate([star, -star])  # [2, 3]
    px = gamma * (p[:, 0] + beta * m / 2)
    return np.stack([np.hypot(px, p[:, 1]), np.arcsinh(p[:, 2] / np.hypot(px, p[:, 1])), np.arctan2(p[:, 1], px)], 1)


def _qcd_partons(pt: float, rng: np.random.Generator, radius: float = 1.0) -> np.ndarray:
    """One parton and its leading-log hardest emission, pT centroid at the origin: [2, 3] (pT, eta, phi)."""
    rho = np.exp(-np.sqrt(-np.log(rng.random()) / ALPHA_A))
    z_min = min(0.5 * (1 - np.sqrt(max(1 - 4 * rho, 0.0))) + 1e-6, 0.5)
    z = z_min * (0.5 / z_min) ** rng.random()
    theta = radius * np.sqrt(rho / (z * (1 - z)))
    direction = rng.uniform(0, 2 * np.pi)
    offsets = theta * np.array([[-z], [1 - z]]) * [np.cos(direction), np.sin(direction)]  # [2, 2]
    return np.column_stack([[pt * (1 - z), pt * z], offsets])


def _fragment(partons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partons [P, 3] -> particles [N, 3] (pT, eta, phi), the underlying event included."""
    out = []
    for p, eta, phi in partons:
        n = 2 + rng.poisson(5 * np.log(max(p, 1.0)))
        x = rng.dirichlet(np.full(n, 0.6))
        angle = np.minimum(rng.exponential(0.4, n) / np.maximum(x * p, 1e-3), 3.0)
        azimuth = rng.uniform(0, 2 * np.pi, n)
        out.append(np.column_stack([x * p, eta + angle * np.cos(azimuth), phi + angle * np.sin(azimuth)]))
    n = rng.poisson(4)
    r, azimuth = np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    out.append(np.column_stack([rng.exponential(0.5, n), r * np.cos(azimuth), r * np.sin(azimuth)]))
    return np.concatenate(out)


def _subjet(particles: np.ndarray, candidates: np.ndarray) -> np.ndarray | None:
    """The pT centroid [2] of the particles within SUBJET_R of the hardest candidate (a bool mask), or None."""
    if not candidates.any():
        return None
    seed = particles[np.flatnonzero(candidates)[np.argmax(particles[candidates, 0])], 1:]
    near = np.hypot(*(particles[:, 1:] - seed).T) < SUBJET_R
    return np.average(particles[near, 1:], axis=0, weights=particles[near, 0])


def preprocess(particles: np.ndarray) -> np.ndarray:
    """Particles [N, 3] (pT, eta, phi) -> the image [25, 25] of pixel pT: centred on the leading subjet, the second
    subjet rotated to point down, flipped so the right half (eta > 0) holds more pT."""
    leading = _subjet(particles, np.ones(len(particles), bool))
    xy = particles[:, 1:] - leading  # [N, 2] (eta, phi)
    second = _subjet(np.column_stack([particles[:, 0], xy]), np.hypot(*xy.T) > SUBJET_R)
    if second is not None:
        angle = -np.pi / 2 - np.arctan2(second[1], second[0])
        c, s = np.cos(angle), np.sin(angle)
        xy = xy @ np.array([[c, s], [-s, c]])
    column = np.floor((xy[:, 0] + HALF) / PIXEL).astype(int)
    row = np.floor((HALF - xy[:, 1]) / PIXEL).astype(int)
    inside = (column >= 0) & (column < SIDE) & (row >= 0) & (row < SIDE)
    image = np.bincount(row[inside] * SIDE + column[inside], particles[inside, 0], SIDE * SIDE).reshape(SIDE, SIDE)
    return image[:, ::-1] if image[:, SIDE // 2 + 1:].sum() < image[:, : SIDE // 2].sum() else image


def simulate(n: int, label: int, seed: int) -> np.ndarray:
    """n jet images of class `label` (0 qcd, 1 w): [n, 25, 25] float64 pixel pT in GeV."""
    rng = np.random.default_rng([seed, label])
    partons = _w_partons if CLASSES[label] == "w" else _qcd_partons
    return np.stack([preprocess(_fragment(partons(rng.uniform(*PT_RANGE), rng), rng)) for _ in range(n)])


def to_levels(pt: np.ndarray) -> np.ndarray:
    """Pixel pT (GeV) -> uint8 levels: 0 empty, k >= 1 the log-spaced bin PT_MIN exp((k - 1) STEP)."""
    k = 1 + np.round(np.log(np.maximum(pt, PT_MIN * 1e-3) / PT_MIN) / STEP)
    return np.clip(np.where(pt > 0, k, 0), 0, LEVELS - 1).astype(np.uint8)


def to_pt(levels: np.ndarray) -> np.ndarray:
    """Levels -> pixel pT in GeV (float64), 0 for level 0."""
    k = np.asarray(levels, np.float64)
    return np.where(k > 0, PT_MIN * np.exp((k - 1) * STEP), 0.0)


def _flat(images: np.ndarray) -> np.ndarray:
    """[N, (1,) 25, 25] -> [N, 625] float64."""
    return np.asarray(images, np.float64).reshape(len(images), SIDE * SIDE)


ETA, PHI = np.meshgrid(CENTRES, -CENTRES)  # [25, 25] each: a pixel's (eta, phi) centre
COORDS = np.stack([ETA.ravel(), PHI.ravel()], 1)  # [625, 2]


def jet_pt(images: np.ndarray) -> np.ndarray:
    """pT^2 = (sum I cos phi)^2 + (sum I sin phi)^2 over pixels: [N, (1,) 25, 25] GeV -> [N]."""
    i = _flat(images)
    return np.hypot(i @ np.cos(COORDS[:, 1]), i @ np.sin(COORDS[:, 1]))


def jet_mass(images: np.ndarray) -> np.ndarray:
    """m^2 = (sum I cosh eta)^2 - pT^2 - (sum I sinh eta)^2, pixels massless: [N, (1,) 25, 25] GeV -> [N]."""
    i = _flat(images)
    m2 = (i @ np.cosh(COORDS[:, 0])) ** 2 - jet_pt(images) ** 2 - (i @ np.sinh(COORDS[:, 0])) ** 2
    return np.sqrt(np.maximum(m2, 0))


def _distances(axes: np.ndarray) -> np.ndarray:
    """axes [N, A, 2] -> Delta R of every pixel to every axis [N, A, 625]."""
    return np.linalg.norm(COORDS[None, None] - axes[:, :, None], axis=-1)


def tau21(images: np.ndarray, iterations: int = 5) -> np.ndarray:
    """N-subjettiness tau_2 / tau_1 (beta 1, R0 1): tau_N = sum_k pT_k min_a Delta R_ak / sum_k pT_k. tau_1's axis is
    the pT centroid; tau_2's axes start at the hardest pixel and the pixel of largest pT Delta R from it, then
    `iterations` pT-weighted 2-means steps. [N, (1,) 25, 25] -> [N]; 0 for an empty image."""
    i = _flat(images)
    total = np.maximum(i.sum(1), 1e-12)
    tau1 = (i * _distances((i @ COORDS / total[:, None])[:, None])[:, 0]).sum(1) / total
    first = COORDS[i.argmax(1)]  # [N, 2]
    second = COORDS[(i * _distances(first[:, None])[:, 0]).argmax(1)]
    axes = np.stack([first, second], 1)  # [N, 2, 2]
    for _ in range(iterations):
        d = _distances(axes)  # [N, 2, 625]
        weights = i[:, None] * (d.argmin(1)[:, None] == np.arange(2)[None, :, None])  # [N, 2, 625]
        mass = weights.sum(2, keepdims=True)
        axes = np.where(mass > 0, weights @ COORDS / np.maximum(mass, 1e-12), axes)
    tau2 = (i * _distances(axes).min(1)).sum(1) / total
    return np.where(tau1 > 0, tau2 / np.maximum(tau1, 1e-12), 0.0)


@lru_cache(maxsize=4)
def _jets(per_class: int, test_per_class: int, seed: int, name: str) -> Split:
    """per_class train and test_per_class test jets of each class, as levels [N, 1, 25, 25] uint8."""
    def part(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([simulate(n, label, seed + offset) for label in range(len(CLASSES))])
        y = np.repeat(np.arange(len(CLASSES)), n)
        order = np.random.default_rng(seed + offset).permutation(len(y))
        return to_levels(x)[order, None], y[order]

    return Split(name, *part(per_class, 0), *part(test_per_class, 1), levels=LEVELS, num_classes=len(CLASSES))


def jet_images() -> Split:
    """10,000 training and 1,000 test jets of each class (seed 0 and 1)."""
    return _jets(10_000, 1_000, 0, "jets")


def jet_images_tiny() -> Split:
    """64 training and 32 test jets of each class, for tests."""
    return _jets(64, 32, 0, "jets-tiny")


def observables(images: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel pT images [N, (1,) 25, 25] -> {"mass", "pt", "tau21"}: each [N]."""
    return {"mass": jet_mass(images), "pt": jet_pt(images), "tau21": tau21(images)}


def wasserstein(images: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The 1-D Wasserstein distance of each observable between two sets of pixel pT images (GeV for mass, pT)."""
    from scipy.stats import wasserstein_distance

    ours, theirs = observables(images), observables(reference)
    return {k: float(wasserstein_distance(ours[k], theirs[k])) for k in ours}

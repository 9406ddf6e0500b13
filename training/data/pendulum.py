"""A damped pendulum under random torques, seen only as 16x16 grayscale images (the data of `dvbf`).

The state (theta, omega) follows  theta'' = -(g / l) sin(theta) - damping * omega + torque, integrated by
semi-implicit Euler in SUBSTEPS substeps of each frame interval DT, the torque held over the interval. A frame
draws the rod from the pivot at the image's centre to the bob at angle theta (0: hanging down, counter-clockwise
positive) as a soft line: a pixel's intensity is exp(-d^2 / (2 WIDTH^2)) of its distance d to the rod. The torques
are i.i.d. uniform in [-MAX_TORQUE, MAX_TORQUE] per frame; the initial angle is uniform on the circle and the
initial angular velocity uniform in [-MAX_OMEGA0, MAX_OMEGA0].

A sequence is T frames x_1..x_T (uint8 levels 0..255), the actions u_1..u_T (u_t acts between frames t and t+1;
u_T is drawn but never shown an effect) and the true states s_t = (cos theta, sin theta, omega), which no model
sees: they exist to test what a model's latent holds. Train and test sequences come from fixed, distinct seeds.
"""

from dataclasses import dataclass

import numpy as np

from training.data.images import Split

SIDE, LEVELS = 16, 256
DT, SUBSTEPS = 0.1, 10
GRAVITY, DAMPING = 10.0, 0.25  # g / l in s^-2, and the damping rate in s^-1
MAX_TORQUE, MAX_OMEGA0 = 3.0, 3.0
ROD, WIDTH = 6.5, 0.7  # pixels
TRAIN_SEED, TEST_SEED = 0, 1


@dataclass(frozen=True)
class PendulumSplit(Split):
    """Frames as uint8 [N, T, 1, 16, 16] (x), actions as float32 [N, T, 1] (y), and the hidden true states
    (cos theta, sin theta, omega) as float32 [N, T, 3], never shown to a model."""

    states_train: np.ndarray | None = None
    states_test: np.ndarray | None = None
    num_classes: int = 0

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[2:])

    def describe(self) -> dict:
        return {"dataset": self.name, "train": len(self.x_train), "test": len(self.x_test),
                "steps": self.x_train.shape[1], "seeds": [TRAIN_SEED, TEST_SEED]}


def step(theta: np.ndarray, omega: np.ndarray, torque: np.ndarray, damping: float = DAMPING
         ) -> tuple[np.ndarray, np.ndarray]:
    """One frame interval DT of the dynamics, torque held: (theta, omega) [N] each -> the next (theta, omega)."""
    h = DT / SUBSTEPS
    for _ in range(SUBSTEPS):
        omega = omega + h * (-GRAVITY * np.sin(theta) - damping * omega + torque)
        theta = theta + h * omega
    return theta, omega


def energy(theta: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Mechanical energy per unit m l^2: omega^2 / 2 + (g / l)(1 - cos theta), 0 at rest hanging down."""
    return 0.5 * omega ** 2 + GRAVITY * (1 - np.cos(theta))


def render(theta: np.ndarray) -> np.ndarray:
    """Angles [N] -> uint8 frames [N, 1, 16, 16]: the rod from the centre towards (sin theta, cos theta) down."""
    centre = (SIDE - 1) / 2
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) - centre  # [16, 16] each, image rows grow downwards
    bob = ROD * np.stack([np.cos(theta), np.sin(theta)], -1)  # [N, 2] (row, col)
    along = np.clip((rows * bob[:, 0, None, None] + cols * bob[:, 1, None, None]) / ROD ** 2, 0, 1)  # [N, 16, 16]
    d2 = (rows - along * bob[:, 0, None, None]) ** 2 + (cols - along * bob[:, 1, None, None]) ** 2
    return np.round(255 * np.exp(-d2 / (2 * WIDTH ** 2)))[:, None].astype(np.uint8)


def simulate(n: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n sequences of `steps` frames: (frames uint8 [n, T, 1, 16, 16], actions float32 [n, T, 1],
    states float32 [n, T, 3])."""
    rng = np.random.default_rng(seed)
    theta, omega = rng.uniform(-np.pi, np.pi, n), rng.uniform(-MAX_OMEGA0, MAX_OMEGA0, n)
    actions = rng.uniform(-MAX_TORQUE, MAX_TORQUE, (n, steps)).astype(np.float32)
    frames, states = [], []
    for t in range(steps):
        frames.append(render(theta))
        states.append(np.stack([np.cos(theta), np.sin(theta), omega], -1))
        theta, omega = step(theta, omega, actions[:, t])
    return np.stack(frames, 1), actions[..., None], np.stack(states, 1).astype(np.float32)


def pendulum_frames(n_train: int = 2000, n_test: int = 200, steps: int = 32, name: str = "pendulum") -> PendulumSplit:
    """Fixed train (seed TRAIN_SEED) and test (seed TEST_SEED) sequences."""
    x_train, u_train, s_train = simulate(n_train, steps, TRAIN_SEED)
    x_test, u_test, s_test = simulate(n_test, steps, TEST_SEED)
    return PendulumSplit(name, x_train, u_train, x_test, u_test, levels=LEVELS,
                         states_train=s_train, states_test=s_test)


def pendulum_frames_tiny() -> PendulumSplit:
    """A few short sequences, for tests."""
    return pendulum_frames(n_train=16, n_test=8, steps=8, name="pendulum-tiny")

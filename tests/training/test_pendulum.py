"""The pendulum simulator (training/data/pendulum.py): its physics, its frames and its fixed seeds."""

import numpy as np
import pytest

import training.data.pendulum as sim


def test_energy_decays_without_torque_and_is_kept_without_damping():
    theta, omega = np.array([2.5, -1.0, 0.3]), np.array([0.0, 3.0, -4.0])
    damped, free = [sim.energy(theta, omega)], [sim.energy(theta, omega)]
    state, free_state = (theta, omega), (theta, omega)
    for _ in range(100):
        state = sim.step(*state, np.zeros(3))
        free_state = sim.step(*free_state, np.zeros(3), damping=0.0)
        damped.append(sim.energy(*state))
        free.append(sim.energy(*free_state))
    damped, free = np.array(damped), np.array(free)
    assert (np.diff(damped, axis=0) < 0).all()  # damping takes energy every frame
    assert (damped[-1] < 0.2 * damped[0]).all()  # 10 s at rate 0.25: e^-2.5 of the kinetic part, about
    assert np.abs(free / free[0] - 1).max() < 0.05  # semi-implicit Euler keeps it to a few percent, no drift


def test_torque_pushes_the_angular_velocity_its_way():
    theta, omega = np.zeros(2), np.zeros(2)
    _, pushed = sim.step(theta, omega, np.array([2.0, -2.0]))
    assert pushed[0] > 0 > pushed[1]


@pytest.mark.parametrize("theta", [0.0, np.pi / 2, np.pi, -np.pi / 3])
def test_the_frame_shows_the_rod_at_its_angle(theta):
    frame = sim.render(np.array([theta]))[0, 0].astype(float)  # [16, 16]
    rows, cols = np.mgrid[0:16, 0:16] - 7.5
    centre = np.array([(frame * rows).sum(), (frame * cols).sum()]) / frame.sum()  # the rod's centre of mass
    assert np.allclose(centre / np.linalg.norm(centre), [np.cos(theta), np.sin(theta)], atol=0.05)
    assert frame.max() > 150 and frame.min() == 0


def test_sequences_are_fixed_by_their_seeds_and_hide_the_state():
    a, b = sim.pendulum_frames_tiny(), sim.pendulum_frames_tiny()
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train[:8], a.x_test)  # train and test seeds differ
    assert a.x_train.shape == (16, 8, 1, 16, 16) and a.y_train.shape == (16, 8, 1)
    assert np.abs(a.y_train).max() <= sim.MAX_TORQUE
    cos, sin = a.states_train[..., 0], a.states_train[..., 1]
    assert np.allclose(cos ** 2 + sin ** 2, 1, atol=1e-5)
    assert np.array_equal(a.x_train[:, 3], sim.render(np.arctan2(sin[:, 3], cos[:, 3])))  # frames are the states

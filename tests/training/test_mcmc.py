"""Metropolis-Hastings completion: observed pixels stay fixed, the reflected walk is a symmetric kernel, and the
chain's long-run distribution over the unobserved pixels is the exact conditional."""

import itertools

import torch

from training.nn.mcmc import metropolis_step, reflect

LEVELS = 4


def table_log_prob(table: torch.Tensor):
    """A distribution over 3 pixels of 4 levels given by a full table [4, 4, 4]: x [B, 3] -> log p [B]."""
    log_table = table.log()
    return lambda x: log_table[x[:, 0], x[:, 1], x[:, 2]]


def random_table(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(LEVELS, LEVELS, LEVELS, generator=g, dtype=torch.float64) ** 3 + 0.01
    return table / table.sum()


def test_reflect_maps_into_the_levels_and_mirrors_the_edges():
    v = torch.tensor([-3, -2, -1, 0, 3, 4, 5, 6])
    assert reflect(v, 4).tolist() == [2, 1, 0, 0, 3, 3, 2, 1]


def test_the_reflected_walk_is_a_symmetric_kernel():
    """q(x -> x') = q(x' -> x) for the walk with steps round(scale * Logistic(0, 1)), by exact summation."""
    from math import exp

    scale, levels = 1.5, 5

    def step_probability(d: int) -> float:  # P(round(scale * L) cut to +-(levels - 1) = d)
        cdf = lambda t: 1.0 / (1.0 + exp(-t / scale))  # noqa: E731
        low = -float("inf") if d == -(levels - 1) else d - 0.5
        high = float("inf") if d == levels - 1 else d + 0.5
        return (1.0 if high == float("inf") else cdf(high)) - (0.0 if low == -float("inf") else cdf(low))

    q = torch.zeros(levels, levels, dtype=torch.float64)
    for x, d in itertools.product(range(levels), range(-(levels - 1), levels)):
        q[x, reflect(torch.tensor(x + d), levels)] += step_probability(d)
    assert torch.allclose(q, q.T, atol=1e-12) and torch.allclose(q.sum(1), torch.ones(levels, dtype=torch.float64))


def test_observed_pixels_stay_fixed_and_the_step_is_a_function_of_its_noise():
    log_prob = table_log_prob(random_table())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, LEVELS, (50, 3), generator=g)
    observed = torch.randint(0, LEVELS, (50, 3), generator=g)
    mask = torch.tensor([1, 0, 0]).expand(50, 3)
    noise, accept = torch.rand(50, 3, 2, generator=g), torch.rand(50, 1, generator=g)
    out = metropolis_step(log_prob, x, noise, accept, observed, mask, LEVELS, fraction=0.7, scale=1.5)
    assert torch.equal(out[:, 0], observed[:, 0])
    assert torch.equal(out, metropolis_step(log_prob, x, noise, accept, observed, mask, LEVELS, 0.7, 1.5))
    assert not torch.equal(out[:, 1:], torch.where(mask == 1, observed, x)[:, 1:])  # some proposals accepted


def test_the_chain_samples_the_exact_conditional():
    table = random_table(2)
    log_prob = table_log_prob(table)
    chains, steps, g = 4000, 300, torch.Generator().manual_seed(3)
    observed = torch.full((chains, 3), 2)
    mask = torch.tensor([1, 0, 0]).expand(chains, 3)
    x = torch.randint(0, LEVELS, (chains, 3), generator=g)
    for _ in range(steps):
        noise, accept = torch.rand(chains, 3, 2, generator=g), torch.rand(chains, 1, generator=g)
        x = metropolis_step(log_prob, x, noise, accept, observed, mask, LEVELS, fraction=0.5, scale=1.5)
    counts = torch.zeros(LEVELS, LEVELS, dtype=torch.float64)
    counts.index_put_((x[:, 1], x[:, 2]), torch.ones(chains, dtype=torch.float64), accumulate=True)
    exact = table[2] / table[2].sum()  # p(x1, x2 | x0 = 2)
    total_variation = 0.5 * (counts / chains - exact).abs().sum()
    assert total_variation < 0.04, (counts / chains, exact)

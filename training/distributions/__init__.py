"""Output distributions. Each has log_prob and sampling from uniform noise, so
that sampling runs inside an exported graph and the service owns the noise."""

"""ssm_jax: selective state space models (Mamba) in JAX/Flax for industrial visual inspection."""

__version__ = "0.1.0"

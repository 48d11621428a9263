"""umt_jax: UMT, VideoMAE V2, vid-TLDR and MSTA in JAX/Flax."""
__version__ = "0.1.0"

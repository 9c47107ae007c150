"""polm: post-training for language models (SFT, alignment, RL, merging, evaluation)."""

__version__ = "0.1.0"

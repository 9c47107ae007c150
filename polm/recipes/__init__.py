"""One file per post-training method, each readable top to bottom."""

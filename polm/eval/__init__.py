"""Evaluation: a model adapter (loglikelihood / generate), a task registry, statistics and reports."""

"""Losses as pure tensor functions, registered by name (DESIGN.md rule 1)."""

from polm.losses.preference import (
    PREFERENCE_LOSSES,
    REWARD_MODEL_LOSSES,
    PairLogps,
    PreferenceLoss,
    UnpairedLogps,
    bradley_terry,
)

__all__ = ["PREFERENCE_LOSSES", "REWARD_MODEL_LOSSES", "PairLogps", "PreferenceLoss", "UnpairedLogps",
           "bradley_terry"]

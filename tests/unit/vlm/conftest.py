"""The tiny composed VLM fixture (see vlm_helpers)."""

from __future__ import annotations

import pytest
from vlm_helpers import tiny_vlm


@pytest.fixture()
def vlm(tiny_tokenizer):
    return tiny_vlm(tiny_tokenizer)

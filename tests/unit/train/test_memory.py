"""glibc's mmap threshold: pinned when asked, left alone when the user set it or asked for 0."""

import ctypes
import ctypes.util
import sys

import pytest

from polm.train.memory import set_mmap_threshold

glibc = sys.platform.startswith("linux") and bool(ctypes.util.find_library("c"))


def test_zero_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert set_mmap_threshold(0) is False


def test_a_threshold_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert set_mmap_threshold(1) is False


@pytest.mark.skipif(not glibc, reason="mallopt is glibc's")
def test_applied_on_glibc_and_large_tensors_still_work(monkeypatch):
    import torch

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert set_mmap_threshold(1) is True
    x = torch.ones(1 << 20)   # 4 MiB: served by mmap now
    assert float(x.sum()) == float(1 << 20)

"""The demo's derived reference captions, by hand."""

from __future__ import annotations

import numpy as np

from polm.vlm_demo import caption_cuts, caption_of


def test_caption_of_reads_tone_and_size_from_the_pixels():
    img = np.zeros((28, 28), np.uint8)
    img[:7] = 100                         # a quarter of the frame, grey level 100
    assert caption_of(img, "T-shirt/top", (90.0, 150.0), 0.3) == "a small grey t-shirt or top"
    assert caption_of(img, "Ankle boot", (120.0, 150.0), 0.2) == "a large dark ankle boot"
    img[:7] = 20                          # below the foreground level: nothing is garment
    assert caption_of(img, "Bag", (90.0, 150.0), 0.3) == "a small dark bag"


def test_caption_cuts_are_terciles_and_the_median():
    images = []
    for level, rows in ((60, 7), (120, 14), (240, 21)):
        img = np.zeros((28, 28), np.uint8)
        img[:rows] = level
        images.append(img)
    (low, high), size = caption_cuts(images)
    assert (low, high) == (100.0, 160.0)  # np.quantile of [60, 120, 240] at 1/3 and 2/3
    assert size == 0.5                    # the median share: 14 rows of 28

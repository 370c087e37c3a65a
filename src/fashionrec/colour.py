"""Colour signal of the garment itself: a histogram of the product's pixels, not of the white background.

ImageNet features barely see colour, so ranking can blend in this second, tiny vector (77 numbers)
with a weight the user sets per query. The histogram is taken in HSV: 12 hues (soft-assigned to the
two nearest, so a hue on a bin edge does not flip) x 2 saturations x 3 values for coloured pixels,
and 5 grey levels for the rest. Its square root has unit length, so the dot product of two colour
vectors is their Bhattacharyya coefficient: 1 for the same colours, 0 for none in common.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HUES = 12
SATURATION_CENTRES = np.array([0.35, 0.8])
VALUE_CENTRES = np.array([0.25, 0.55, 0.85])
GREY_CENTRES = np.array([0.05, 0.3, 0.55, 0.75, 0.95])
GREY_SATURATION = 0.2  # below this (or very dark), a pixel counts as grey
COLOUR_DIM = HUES * len(SATURATION_CENTRES) * len(VALUE_CENTRES) + len(GREY_CENTRES)
BACKGROUND_VALUE, BACKGROUND_SATURATION = 0.92, 0.08  # near-white: the studio background
MIN_FOREGROUND = 0.02  # a white product on white: fall back to every pixel
STEP = 4  # every 4th pixel each way is plenty for a histogram


def _soft(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two neighbouring bins of each value and the share of the upper one (linear interpolation)."""
    upper = np.clip(np.searchsorted(centres, x), 1, len(centres) - 1)
    lower = upper - 1
    share = np.clip((x - centres[lower]) / (centres[upper] - centres[lower]), 0.0, 1.0)
    return lower, upper, share


def colour_vector(pixels: np.ndarray) -> np.ndarray:
    """The colour vector of an RGB uint8 image array [H, W, 3] (e.g. the model's square input)."""
    sample = np.ascontiguousarray(pixels[::STEP, ::STEP])
    hsv = np.asarray(Image.fromarray(sample, "RGB").convert("HSV"), dtype=np.float32).reshape(-1, 3) / 255.0
    hue, saturation, value = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    foreground = ~((value > BACKGROUND_VALUE) & (saturation < BACKGROUND_SATURATION))
    if foreground.mean() >= MIN_FOREGROUND:
        hue, saturation, value = hue[foreground], saturation[foreground], value[foreground]
    histogram = np.zeros(COLOUR_DIM, np.float64)
    grey = (saturation < GREY_SATURATION) | (value < 0.15)
    low, high, share = _soft(value[grey], GREY_CENTRES)
    offset = COLOUR_DIM - len(GREY_CENTRES)
    np.add.at(histogram, offset + low, 1.0 - share)
    np.add.at(histogram, offset + high, share)

    position = hue[~grey] * HUES - 0.5  # hue bin centres at 0.5, 1.5, ... in bin units; hue wraps around
    hue_low = np.floor(position).astype(int)
    hue_bins = ((hue_low % HUES, 1.0 - (position - hue_low)), ((hue_low + 1) % HUES, position - hue_low))
    s_low, s_high, s_share = _soft(saturation[~grey], SATURATION_CENTRES)
    v_low, v_high, v_share = _soft(value[~grey], VALUE_CENTRES)
    for h, h_weight in hue_bins:
        for s_bin, s_weight in ((s_low, 1.0 - s_share), (s_high, s_share)):
            for v_bin, v_weight in ((v_low, 1.0 - v_share), (v_high, v_share)):
                index = (h * len(SATURATION_CENTRES) + s_bin) * len(VALUE_CENTRES) + v_bin
                np.add.at(histogram, index, h_weight * s_weight * v_weight)
    total = histogram.sum()
    return np.sqrt(histogram / total).astype(np.float32) if total else histogram.astype(np.float32)

"""The top-k results of an evaluation's queries: what evaluate.py computes and plots.py draws.

Its own module so that plots need not import evaluate (which imports plots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """The top-k results of every query: positions into the index and their scores."""

    queries: np.ndarray  # [Q] positions of the query items
    positions: np.ndarray  # [Q, K] positions of their results, self excluded
    scores: np.ndarray  # [Q, K]

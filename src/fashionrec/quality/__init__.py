"""Measuring and improving retrieval quality: evaluation (evaluate, plots) and training (train, config).

Nothing here is needed to search: the encoders package never imports it.
"""

"""Per-feature statistics as LeRobot writes them: min, max, mean, std, count and quantiles,
per episode and merged over episodes (LeRobot's ``aggregate_stats``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["QUANTILES", "feature_stats", "from_json", "image_stats", "merge_stats", "to_json"]

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# LeRobot samples at most this many of an episode's frames for image statistics, and shrinks
# frames larger than _IMAGE_MAX_SIDE to about _IMAGE_TARGET_SIDE pixels a side.
_IMAGE_SAMPLES = 100
_IMAGE_MAX_SIDE = 300
_IMAGE_TARGET_SIDE = 150

Stats = Dict[str, np.ndarray]


def feature_stats(values: np.ndarray) -> Stats:
    """Statistics over the first axis of ``values`` (frames x features), each of shape (features,)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([len(values)]),
    }
    for key, quantile in QUANTILES.items():
        stats[key] = np.quantile(values, quantile, axis=0)
    return stats


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel statistics of uint8 frames (frames x height x width x channels) scaled to
    [0, 1], each of shape (channels, 1, 1), from up to 100 evenly spaced frames."""
    picked = np.round(np.linspace(0, len(frames) - 1, min(len(frames), _IMAGE_SAMPLES))).astype(int)
    sampled = frames[picked]
    height, width = sampled.shape[1:3]
    if max(height, width) >= _IMAGE_MAX_SIDE:
        step = max(height, width) // _IMAGE_TARGET_SIDE
        sampled = sampled[:, ::step, ::step]
    pixels = sampled.reshape(-1, sampled.shape[-1]) / 255.0
    stats = feature_stats(pixels)
    stats = {key: value if key == "count" else value.reshape(-1, 1, 1) for key, value in stats.items()}
    stats["count"] = np.array([len(picked)])
    return stats


def merge_stats(first: Stats, second: Stats) -> Stats:
    """Statistics of the union of two sets of frames (quantiles: weighted by count, as LeRobot)."""
    counts = np.array([first["count"][0], second["count"][0]], dtype=np.float64)
    total = counts.sum()
    weights = counts / total
    mean = weights[0] * first["mean"] + weights[1] * second["mean"]
    variance = sum(
        weight * (stats["std"] ** 2 + (stats["mean"] - mean) ** 2)
        for weight, stats in zip(weights, (first, second))
    )
    merged = {
        "min": np.minimum(first["min"], second["min"]),
        "max": np.maximum(first["max"], second["max"]),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)]),
    }
    for key in QUANTILES:
        merged[key] = weights[0] * first[key] + weights[1] * second[key]
    return merged


def to_json(stats: Dict[str, Stats]) -> Dict[str, Dict[str, Any]]:
    """Statistics as lists, for ``meta/stats.json``."""
    return {
        feature: {key: value.tolist() for key, value in values.items()} for feature, values in stats.items()
    }


def from_json(stats: Dict[str, Dict[str, Any]]) -> Dict[str, Stats]:
    """The inverse of :func:`to_json`."""
    return {
        feature: {key: np.asarray(value) for key, value in values.items()}
        for feature, values in stats.items()
    }

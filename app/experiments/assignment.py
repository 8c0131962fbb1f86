"""Deterministic assignment: a unit (a conversation or an API key) hashes into an arm.

GrowthBook's hashing, from its SDK (`growthbook.core`): FNV-1a 32-bit of the experiment's seed and the
unit id, twice (hash version 2), into 10,000 buckets, and the arms' weights as consecutive bucket ranges.
The same (seed, unit) gives the same arm in every process, replica and restart with no stored state, and
the same arm GrowthBook's other SDKs would give. Fixed test vectors pin it (tests/unit/test_assignment.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from growthbook.core import chooseVariation, gbhash, getBucketRanges


def bucket(seed: str, unit: str) -> float:
    """Where `unit` falls in [0, 1) for an experiment seeded `seed`."""
    n = gbhash(seed, unit, 2)
    assert n is not None  # version 2 always hashes
    return n


def choose_arm(seed: str, unit: str, weights: Sequence[float]) -> int:
    """The index of the arm `unit` is assigned to, arms weighted by `weights` (any positive scale)."""
    total = float(sum(weights))
    ranges = getBucketRanges(len(weights), 1.0, [w / total for w in weights])
    index = chooseVariation(bucket(seed, unit), ranges)
    # Bucket ranges cover [0, 1): a miss is only a float rounding at the last edge.
    return index if index >= 0 else len(weights) - 1

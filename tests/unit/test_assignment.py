"""Assignment: GrowthBook's hash (its cross-SDK test vectors), fixed arms for fixed units, weights
honoured within a binomial bound over 10,000 synthetic units, and experiment files refused clearly."""

from __future__ import annotations

import pytest
from scipy import stats

from app.experiments.assignment import bucket, choose_arm
from app.experiments.spec import parse_spec
from app.services.errors import InvalidInput

pytestmark = pytest.mark.unit


# GrowthBook's hash v2 test vectors (its SDKs' shared cases: seed, value -> bucket).
@pytest.mark.parametrize(
    ("seed", "unit", "expected"),
    [
        ("", "a", 0.0216),
        ("", "b", 0.9054),
        ("b", "a", 0.665),
        ("ef", "d", 0.8601),
        ("asdf", "8952klfjas09ujk", 0.8546),
        ("seed", "a", 0.0505),
    ],
)
def test_the_hash_matches_growthbooks_test_vectors(seed: str, unit: str, expected: float) -> None:
    assert bucket(seed, unit) == expected


def test_fixed_units_get_fixed_arms() -> None:
    # Pinned: a change here moves live conversations between arms.
    units = ["conv-1", "conv-2", "conv-3", "conv-4", "conv-5", "key_abc", "key_def", "stateless:00ff"]
    assert [choose_arm("7", u, [50, 50]) for u in units] == [
        choose_arm("7", u, [0.5, 0.5]) for u in units
    ]  # weights are relative
    assert [choose_arm("7", u, [50, 50]) for u in units] == PINNED_7
    assert [choose_arm("prompt-v4", u, [20, 30, 50]) for u in units] == PINNED_THREE


PINNED_7 = [1, 1, 1, 0, 1, 0, 0, 0]
PINNED_THREE = [0, 2, 2, 2, 0, 0, 0, 2]


@pytest.mark.parametrize("weights", [[50, 50], [10, 90], [1, 1, 2]])
def test_weights_are_honoured_within_a_binomial_bound(weights: list[float]) -> None:
    n = 10_000
    counts = [0] * len(weights)
    for i in range(n):
        counts[choose_arm("weights-test", f"unit-{i}", weights)] += 1
    for arm, count in enumerate(counts):
        p = weights[arm] / sum(weights)
        low, high = stats.binom.interval(0.999, n, p)
        assert low <= count <= high, (weights, counts)


def test_another_seed_reshuffles_the_units() -> None:
    a = [choose_arm("one", f"u{i}", [1, 1]) for i in range(200)]
    b = [choose_arm("two", f"u{i}", [1, 1]) for i in range(200)]
    assert 60 < sum(x != y for x, y in zip(a, b, strict=True)) < 140


SPEC = """
name: prompt-v4
collections: [handbook]
unit: conversation
seed: 7
arms:
  - {name: control, weight: 50, overrides: {}}
  - {name: v4, weight: 50, overrides: {prompt: answer@v4, model: local-qwen2.5-0.5b, top_k: 8}}
primary_metric: thumbs_up_rate
guardrails: [{metric: error_rate, max_increase: 0.02}, {metric: latency_p95_ms, max_ratio: 1.5}]
"""


def test_the_issues_experiment_file_parses_and_round_trips() -> None:
    spec = parse_spec(SPEC)
    assert (spec.name, spec.hash_seed, spec.control.name, spec.unit) == (
        "prompt-v4",
        "7",
        "control",
        "conversation",
    )
    assert spec.arm("v4").overrides.values() == {
        "prompt": "answer@v4",
        "model": "local-qwen2.5-0.5b",
        "top_k": 8,
    }
    assert parse_spec(spec.to_yaml()) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("arms:\n  - {name: control, weight: 50}\n", "arms"),
        ("arms:\n  - {name: a, weight: 1}\n  - {name: a, weight: 1}\n", "distinct"),
        ("arms:\n  - {name: a, weight: 0}\n  - {name: b, weight: 1}\n", "weight"),
        (
            "arms:\n  - {name: a, weight: 1, overrides: {temperature: 2}}\n  - {name: b, weight: 1}\n",
            "temperature",
        ),
        ("unit: user\n", "unit"),
        ("primary_metric: happiness\n", "primary_metric"),
        ("guardrails: [{metric: error_rate}]\n", "one of max_increase or max_ratio"),
        ("guardrails: [{metric: latency_p95_ms, max_increase: 100}]\n", "max_ratio"),
        ("guardrails: [{metric: thumbs_up_rate, max_increase: 0.1}]\n", "metric"),
    ],
)
def test_a_bad_experiment_file_is_refused_naming_what_is_wrong(change: str, message: str) -> None:
    base = "name: x\ncollections: [c]\narms:\n  - {name: a, weight: 1}\n  - {name: b, weight: 1}\n"
    keys = {line.split(":")[0] for line in change.splitlines() if not line.startswith(" ")}
    kept = [
        line
        for line in base.splitlines(keepends=True)
        if line.split(":")[0] not in keys and not ("arms" in keys and line.startswith("  "))
    ]
    with pytest.raises(InvalidInput, match=message) as raised:
        parse_spec("".join(kept) + change)
    assert raised.value.code == "invalid_experiment"


def test_not_yaml_and_not_a_mapping_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not YAML"):
        parse_spec("name: [unclosed")
    with pytest.raises(InvalidInput, match="mapping"):
        parse_spec("- just\n- a list\n")

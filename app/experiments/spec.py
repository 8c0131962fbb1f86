"""An experiment as data: the YAML file `ragserver experiments create --file` reads, the admin API's body.

    name: prompt-v4
    collections: [handbook]
    unit: conversation          # or key
    seed: 7
    arms:
      - {name: control, weight: 50, overrides: {}}
      - {name: v4, weight: 50, overrides: {prompt: answer@v4, model: local-qwen2.5-0.5b, top_k: 8}}
    primary_metric: thumbs_up_rate
    guardrails: [{metric: error_rate, max_increase: 0.02}, {metric: latency_p95_ms, max_ratio: 1.5}]

The control arm is the one named `control`, else the first. Overrides take any field of an answer profile.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.services.answer_profiles import AnswerProfile
from app.services.errors import InvalidInput, parse_model

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STATUSES = ("draft", "running", "paused", "stopped")

# Metrics of an arm (app/experiments/report.py computes them), and whether higher is better.
METRICS: dict[str, bool] = {
    "thumbs_up_rate": True,  # answers rated up / answers
    "thumbs_down_rate": False,
    "feedback_rate": True,  # answers with any feedback / answers
    "citation_ctr": True,  # answers with a citation opened / answers
    "copy_rate": True,
    "regenerate_rate": False,
    "no_answer_rate": False,  # abstained or refused / answers
    "error_rate": False,  # failed requests / requests
    "grounding_score": True,
    "judge_faithfulness": True,
    "judge_relevancy": True,
    "latency_ms": False,  # mean total latency of an answer
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "tokens_per_answer": False,
    "cost_per_answer": False,
}
# Guardrails compare an arm against control where higher is worse.
GUARDRAIL_METRICS = tuple(m for m, higher_better in METRICS.items() if not higher_better)


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    weight: float = Field(gt=0, description="Share of the traffic, relative to the other arms' weights.")
    overrides: AnswerProfile = Field(default_factory=AnswerProfile)


class Guardrail(BaseModel):
    """Stop an arm whose `metric` is worse than control's beyond the bound, with sequential significance:
    `max_increase` (an absolute difference, for rates) or `max_ratio` (treatment / control)."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal[GUARDRAIL_METRICS]  # type: ignore[valid-type]
    max_increase: float | None = Field(None, ge=0)
    max_ratio: float | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _one_bound(self) -> Guardrail:
        if (self.max_increase is None) == (self.max_ratio is None):
            raise ValueError("a guardrail takes one of max_increase or max_ratio")
        if self.metric in ("latency_p50_ms", "latency_p95_ms") and self.max_ratio is None:
            raise ValueError(f"a {self.metric} guardrail takes max_ratio (treatment / control)")
        return self


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = Field("", max_length=2000)
    collections: list[str] = Field(min_length=1, max_length=50)
    unit: Literal["conversation", "key"] = "conversation"
    seed: str | int | None = Field(None, description="The hash seed (default: the experiment's name).")
    arms: list[Arm] = Field(min_length=2, max_length=10)
    primary_metric: Literal[tuple(METRICS)] = "thumbs_up_rate"  # type: ignore[valid-type]
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _distinct(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be distinct")
        if len(set(self.collections)) != len(self.collections):
            raise ValueError("collections must be distinct")
        return self

    @property
    def hash_seed(self) -> str:
        return self.name if self.seed is None else str(self.seed)

    @property
    def control(self) -> Arm:
        return next((a for a in self.arms if a.name == "control"), self.arms[0])

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise InvalidInput(
            f"experiment {self.name!r} has no arm {name!r} (arms: {', '.join(a.name for a in self.arms)})",
            code="invalid_arm",
        )

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        for arm in data["arms"]:
            arm["overrides"] = {k: v for k, v in arm["overrides"].items() if v is not None}
        return yaml.safe_dump(data, sort_keys=False)


def parse_spec(data: Any) -> ExperimentSpec:
    """An `ExperimentSpec` from a dict or YAML/JSON text: InvalidInput (400) naming the bad field."""
    return parse_model(
        data,
        ExperimentSpec,
        what="experiment",
        shape="a mapping (name, collections, arms, ...)",
        code="invalid_experiment",
    )

"""A collection's routing chain as data: the YAML `ragserver routes set C --file chain.yaml` reads.

    stages:
      - {type: rule, id: greeting, pattern: '^(hi|hello)\\b', answer: "Hello! Ask me about the handbook."}
      - {type: rule, id: payroll, keywords: [salary, payslip], refuse: "Ask payroll@ directly."}
      - {type: curated, threshold: auto}
      - {type: llm, model_policy: {default: local-qwen2.5-0.5b,
                                   when: [{top_score_below: 0.3, model: strong}]}}

Stages run in order; each answers, refuses, or hands on (possibly changing what the next stages use: a
rule may send the question to another collection, answer profile or model). Patterns are RE2 (google-re2):
matching takes time linear in the question's length whatever the pattern, so no pattern can make a request
backtrack for seconds; what RE2 cannot do in linear time (backreferences, lookaround) is refused at creation.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.services.answer_profiles import AnswerProfile
from app.services.errors import parse_model

ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_STAGES = 200
MAX_PATTERN = 1000
MAX_KEYWORDS = 200
MAX_TEXT = 4000
# RE2's memory budget for one compiled pattern: a pattern needing more is refused at creation.
PATTERN_MEMORY = 1 << 20


def compile_pattern(pattern: str) -> Any:
    """The RE2 program of `pattern` (case-insensitive); ValueError for one RE2 refuses."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = PATTERN_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"pattern {pattern!r} is not a linear-time (RE2) pattern: {message}") from exc


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteAction(_Stage):
    """What a stage does with a question it decides: a canned `answer`, a refusal (`refuse`, its
    reason), or any of `collection`, `profile`, `model` for the stages after it."""

    answer: str | None = Field(None, max_length=MAX_TEXT)
    refuse: str | None = Field(None, max_length=MAX_TEXT)
    collection: str | None = Field(None, max_length=200)
    profile: AnswerProfile | None = None
    model: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _one_action(self) -> RouteAction:
        terminal = [a for a in (self.answer, self.refuse) if a is not None]
        steering = [a for a in (self.collection, self.profile, self.model) if a is not None]
        if len(terminal) > 1 or (terminal and steering) or not (terminal or steering):
            raise ValueError("give one action: answer, refuse, or any of collection / profile / model")
        return self


class RuleStage(RouteAction):
    """A regex or keyword match -> a canned answer, a refusal, or what the next stages use."""

    type: Literal["rule"]
    id: str = Field(pattern=ID)
    pattern: str | None = Field(None, max_length=MAX_PATTERN)
    keywords: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None, max_length=MAX_KEYWORDS
    )

    @model_validator(mode="after")
    def _one_match(self) -> RuleStage:
        if (self.pattern is None) == (self.keywords is None):
            raise ValueError(f"rule {self.id}: give one of pattern or keywords")
        if self.pattern is not None:
            compile_pattern(self.pattern)
        return self

    @cached_property
    def _program(self) -> Any:
        if self.pattern is not None:
            return compile_pattern(self.pattern)
        words = "|".join(re2.escape(k) for k in self.keywords or [])
        return compile_pattern(rf"\b(?:{words})\b")

    def matches(self, question: str) -> bool:
        return self._program.search(question) is not None


class CuratedStage(_Stage):
    """Approved question/answer pairs: a question close enough to one gets its stored answer."""

    type: Literal["curated"]
    id: str = Field("curated", pattern=ID)
    # "auto": the threshold fitted on the paraphrase set (app/routing/curated.py: FITTED_THRESHOLD).
    threshold: float | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _range(self) -> CuratedStage:
        if self.threshold != "auto" and not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError("curated threshold is auto or a cosine similarity in (0, 1]")
        return self


class ClassifierStage(_Stage):
    """A trained classifier (`ragserver routes train`): a confident prediction of a label in `routes`
    acts; a label without a route, or a prediction under its confidence threshold, hands on."""

    type: Literal["classifier"]
    id: str = Field("classifier", pattern=ID)
    model: str = Field(max_length=4096, description="The model directory, under collections.model_roots.")
    routes: dict[str, RouteAction] = Field(default_factory=dict, max_length=100)
    # "auto": each class's threshold fitted at training (its card); a number: one threshold for all.
    min_confidence: float | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _range(self) -> ClassifierStage:
        if self.min_confidence != "auto" and not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError("min_confidence is auto or a probability in [0, 1]")
        return self


class ModelWhen(_Stage):
    """One condition of a model policy: the first that holds picks the model."""

    model: str = Field(max_length=64)
    top_score_below: float | None = None
    top_score_at_least: float | None = None
    question_words_over: int | None = Field(None, ge=0)
    pattern: str | None = Field(None, max_length=MAX_PATTERN)

    @model_validator(mode="after")
    def _some_condition(self) -> ModelWhen:
        conditions = (self.top_score_below, self.top_score_at_least, self.question_words_over, self.pattern)
        if all(c is None for c in conditions):
            raise ValueError(
                "a model policy condition takes top_score_below, top_score_at_least, question_words_over "
                "or pattern"
            )
        if self.pattern is not None:
            compile_pattern(self.pattern)
        return self

    @cached_property
    def _program(self) -> Any:
        return compile_pattern(self.pattern) if self.pattern is not None else None

    def holds(self, question: str, top_score: float | None) -> bool:
        """Whether every condition given holds (a top-score condition fails without sources)."""
        if self.top_score_below is not None and (top_score is None or top_score >= self.top_score_below):
            return False
        if self.top_score_at_least is not None and (top_score is None or top_score < self.top_score_at_least):
            return False
        if self.question_words_over is not None and len(question.split()) <= self.question_words_over:
            return False
        return self._program is None or self._program.search(question) is not None


class ModelPolicy(_Stage):
    default: str | None = Field(
        None, max_length=64, description="None: the profile's, else the default model."
    )
    when: list[ModelWhen] = Field(default_factory=list, max_length=50)


class LLMStage(_Stage):
    """Retrieval and the LLM, with the model picked by the policy after retrieval."""

    type: Literal["llm"]
    id: str = Field("llm", pattern=ID)
    model_policy: ModelPolicy | None = None


Stage = Annotated[RuleStage | CuratedStage | ClassifierStage | LLMStage, Field(discriminator="type")]


class RoutingChain(_Stage):
    stages: list[Stage] = Field(max_length=MAX_STAGES)

    @model_validator(mode="after")
    def _shape(self) -> RoutingChain:
        ids = [s.id for s in self.stages]
        if len(set(ids)) != len(ids):
            raise ValueError("stage ids must be distinct")
        llm = [i for i, s in enumerate(self.stages) if isinstance(s, LLMStage)]
        if len(llm) > 1 or (llm and llm[0] != len(self.stages) - 1):
            raise ValueError("the llm stage, if given, is the last one")
        return self

    @property
    def llm(self) -> LLMStage | None:
        last = self.stages[-1] if self.stages else None
        return last if isinstance(last, LLMStage) else None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def parse_chain(data: Any) -> RoutingChain:
    """A `RoutingChain` from a dict or YAML/JSON text: InvalidInput (400) naming what is wrong."""
    return parse_model(
        data, RoutingChain, what="routing chain", shape="a mapping with `stages`", code="invalid_routes"
    )

"""Versioned prompt templates loaded from YAML files, rendered to OpenAI-style chat messages.

A prompt directory holds one folder per prompt and one file per version::

    prompts/answer/v1.yaml
    prompts/answer/v2.yaml
    prompts/condense/v1.yaml

Each file declares its variables; a template that uses an undeclared variable, or declares one it never
uses, is refused when the registry loads, so a typo fails at startup rather than on the first request.

Templates render document-controlled text (titles, file names, chunk text) next to the model's rules, so
the environment has two sanitising filters (see `inline` and `fenced`): `|inline` for a value that must
stay one short line, `|fenced` for text that sits between the delimiters of a fenced block.
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.errors import DomainError

Role = Literal["system", "user", "assistant"]

# Names and versions become refs ("answer@v2") and folder/file names, so keep them plain.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PromptError(DomainError):
    """Base class for every prompt loading or rendering error."""

    kind, code = "invalid", "prompt_error"


class UnknownPrompt(PromptError):
    """A ref that is malformed or names no loaded template."""

    code = "unknown_prompt"


class MissingVariables(PromptError):
    """Render was called without one or more required variables."""

    def __init__(self, ref: str, missing: Iterable[str]) -> None:
        self.ref = ref
        self.missing = sorted(missing)
        super().__init__(f"prompt {ref!r} is missing required variables: {', '.join(self.missing)}")


class UnexpectedVariables(PromptError):
    """Render was called with variables the template does not declare."""

    def __init__(self, ref: str, unexpected: Iterable[str], declared: Iterable[str]) -> None:
        self.ref = ref
        self.unexpected = sorted(unexpected)
        super().__init__(
            f"prompt {ref!r} got unknown variables: {', '.join(self.unexpected)} "
            f"(declared: {', '.join(sorted(declared)) or 'none'})"
        )


class InvalidTemplate(PromptError):
    """A prompt file or template that cannot be loaded."""


# -- sanitising filters ---------------------------------------------------------------------------
#
# Prompt templates fence untrusted text with tag-like markers (<source n="1"> ... </source>, <history>,
# <question>). A document must not be able to write one of those markers, nor a chat-template control
# token (<|im_start|>, <|eot_id|>, </s>, <start_of_turn>, [INST]): HF and vLLM tokenizers turn such text
# into the real special token. Neutralising replaces the opening bracket with a look-alike ("‹", "⁅"):
# the text stays readable, no tokenizer or model can take it for the marker.

INLINE_LIMIT = 200
# Tag names the prompts use as structure, plus the turn markers of common chat templates.
_STRUCTURE_NAMES = (
    "sources?|documents?|history|question|user|assistant|system|turn|instructions?|s|"
    "start_of_turn|end_of_turn"
)
# "<" and the characters a model may read as one: fullwidth, small form, CJK and math angle brackets.
_OPENERS = "<\uff1c\ufe64\u3008\u2329\u27e8"
# Invisible characters allowed between the bracket and the name ("<\u200b/source>").
_GAP = r"[\s\u200b-\u200d\u2060\ufeff]*"
_MARKER = re.compile(rf"[{_OPENERS}](?={_GAP}/?{_GAP}(?:{_STRUCTURE_NAMES})\b|{_GAP}\|)", re.IGNORECASE)
_INST = re.compile(rf"\[(?={_GAP}/?{_GAP}INST{_GAP}\])", re.IGNORECASE)
# Direction overrides/isolates and marks: reorder what a human reviewer sees, invisible to a model.
_BIDI = "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
# Unicode tag characters ("ASCII smuggling": invisible text a model can still read). Zero-width spaces stay in
# fenced text: dropping them would only make text obfuscated with them easier for the model to read.
_HIDDEN = "\U000e0000-\U000e007f"
# Control characters except tab, newline and carriage return (NUL, ESC, DEL, C1).
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f"
_FENCED_DROP = re.compile(f"[{_BIDI}{_HIDDEN}{_CONTROL}]")
# The ASCII characters `inline` drops: controls (category Cc) that are not whitespace to Python.
_ASCII_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f]")
# Line breaks of every kind (CR, LF, NEL, vertical tab, form feed, line and paragraph separators).
_ANY_SPACE = re.compile(r"\s+")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def neutralise_markers(text: str) -> str:
    """`text` with every fence marker and chat-template token made inert (the bracket becomes "‹")."""
    return _INST.sub("\u2045", _MARKER.sub("\u2039", text))


def fenced(value: Any) -> str:
    """Text to place between fence delimiters: it cannot close the fence or open a chat turn.

    Drops bidi controls, Unicode tag characters and control characters (newlines and tabs are kept),
    then neutralises fence markers and chat-template tokens. Normal text is unchanged.
    """
    return neutralise_markers(_FENCED_DROP.sub("", _text(value)))


def inline(value: Any, limit: int = INLINE_LIMIT) -> str:
    """A title or file name as one short line: every format/control character removed (bidi overrides,
    zero-width and tag characters), all whitespace (newlines included) collapsed to single spaces, fence
    markers neutralised, capped at `limit` characters ("…" marks a cut). Idempotent; a normal title is
    unchanged."""
    text = _text(value)
    if text.isascii():  # the usual title: only C0 controls and DEL to drop, no character-by-character scan
        text = _ASCII_CONTROL.sub("", text)
    else:
        text = "".join(
            ch if ch.isspace() else "" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text
        )
    text = neutralise_markers(_ANY_SPACE.sub(" ", text).strip())
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "\u2026"
    return text


FILTERS = {"inline": inline, "fenced": fenced}


def neutral_inputs(
    *,
    sources: Iterable[Mapping[str, Any]] | None = None,
    history: Iterable[Mapping[str, str]] | None = None,
    question: str | None = None,
) -> dict[str, Any]:
    """Prompt variables with every untrusted value neutralised before any template sees it: titles and
    file names `inline`, source text, history turns and the question `fenced`.

    This is structural, not a template's choice: every version of every prompt (answer@v1..v4 included,
    which predate the filters and print the values as they are) gets text that cannot close a fence or
    open a chat turn. Both filters are idempotent, so a template that applies them again (answer@v3)
    renders the same. Only the variables given are returned."""
    values: dict[str, Any] = {}
    if sources is not None:
        values["sources"] = [
            {
                **s,
                "title": inline(s.get("title")),
                "source": inline(s.get("source")),
                "text": fenced(s.get("text")),
            }
            for s in sources
        ]
    if history is not None:
        values["history"] = [{**m, "content": fenced(m.get("content"))} for m in history]
    if question is not None:
        values["question"] = fenced(question)
    return values


def make_environment() -> SandboxedEnvironment:
    """The Jinja environment prompts render in: sandboxed, strict about undefined names, no escaping, with
    the sanitising filters `inline` and `fenced`."""
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


@dataclass(frozen=True)
class PromptVariable:
    name: str
    required: bool = True


@dataclass(frozen=True)
class PromptMessage:
    role: Role
    template: str


@dataclass(frozen=True)
class PromptTemplate:
    """One version of one prompt. Templates are compiled and checked against the declared variables
    when the object is built."""

    name: str
    version: str
    description: str
    variables: tuple[PromptVariable, ...]
    messages: tuple[PromptMessage, ...]
    environment: SandboxedEnvironment = field(default_factory=make_environment, repr=False, compare=False)
    _compiled: tuple[Template, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("version", self.version)):
            if not _NAME_RE.match(value):
                raise InvalidTemplate(f"invalid prompt {label} {value!r}: use letters, digits, '_', '-', '.'")
        if not self.messages:
            raise InvalidTemplate(f"prompt {self.ref!r} has no messages")
        names = [v.name for v in self.variables]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InvalidTemplate(f"prompt {self.ref!r} declares variables twice: {', '.join(duplicated)}")

        compiled: list[Template] = []
        used: set[str] = set()
        for index, message in enumerate(self.messages, start=1):
            try:
                ast = self.environment.parse(message.template)
            except TemplateSyntaxError as exc:
                raise InvalidTemplate(
                    f"prompt {self.ref!r} message {index} ({message.role}): template syntax error "
                    f"on line {exc.lineno}: {exc.message}"
                ) from exc
            used |= meta.find_undeclared_variables(ast) - set(self.environment.globals)
            compiled.append(self.environment.from_string(ast))

        undeclared = used - set(names)
        if undeclared:
            raise InvalidTemplate(
                f"prompt {self.ref!r} uses undeclared variables: {', '.join(sorted(undeclared))}"
            )
        unused = set(names) - used
        if unused:
            raise InvalidTemplate(
                f"prompt {self.ref!r} declares variables it never uses: {', '.join(sorted(unused))}"
            )
        object.__setattr__(self, "_compiled", tuple(compiled))

    @property
    def ref(self) -> str:
        """The pinned reference to this template, "name@version"."""
        return f"{self.name}@{self.version}"

    @property
    def required_variables(self) -> frozenset[str]:
        return frozenset(v.name for v in self.variables if v.required)

    def declares(self, name: str) -> bool:
        """Whether this version takes variable `name` (a caller passes what only newer versions read)."""
        return any(v.name == name for v in self.variables)

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Render to chat messages ``[{"role", "content"}]``; messages that render empty are dropped.

        Raises MissingVariables / UnexpectedVariables when the arguments do not match the declaration,
        and jinja2's SecurityError when a template reaches for something the sandbox forbids.
        """
        declared = {v.name for v in self.variables}
        unexpected = set(variables) - declared
        if unexpected:
            raise UnexpectedVariables(self.ref, unexpected, declared)
        missing = self.required_variables - set(variables)
        if missing:
            raise MissingVariables(self.ref, missing)
        # Optional variables left out render as None, so templates test them with `{% if name %}`.
        context = {name: None for name in declared} | variables

        rendered: list[dict[str, str]] = []
        for index, (message, template) in enumerate(zip(self.messages, self._compiled, strict=True), 1):
            try:
                content = template.render(context).strip()
            except UndefinedError as exc:
                # A declared variable whose value lacks a field the template reads (a source with no title).
                raise PromptError(f"prompt {self.ref!r} message {index} ({message.role}): {exc}") from exc
            if content:
                rendered.append({"role": message.role, "content": content})
        return rendered


class _VariableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    required: bool = True


class _MessageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    template: str


class _PromptFile(BaseModel):
    """The shape of one YAML prompt file."""

    model_config = ConfigDict(extra="forbid")
    description: str
    variables: list[_VariableSpec | str] = Field(default_factory=list)
    messages: list[_MessageSpec] = Field(min_length=1)


def load_template(path: Path, environment: SandboxedEnvironment | None = None) -> PromptTemplate:
    """Load ``<dir>/<name>/<version>.yaml``; every problem is raised as InvalidTemplate naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidTemplate(f"{path}: cannot read prompt file: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise InvalidTemplate(f"{path}: a prompt file must be a YAML mapping, got {type(raw).__name__}")
    try:
        spec = _PromptFile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidTemplate(f"{path}: invalid prompt file: {exc}") from exc
    variables = tuple(
        PromptVariable(v) if isinstance(v, str) else PromptVariable(v.name, v.required)
        for v in spec.variables
    )
    try:
        return PromptTemplate(
            name=path.parent.name,
            version=path.stem,
            description=spec.description.strip(),
            variables=variables,
            messages=tuple(PromptMessage(m.role, m.template) for m in spec.messages),
            environment=environment or make_environment(),
        )
    except InvalidTemplate as exc:
        raise InvalidTemplate(f"{path}: {exc}") from exc


def _natural_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key under which v2 < v10 (digit runs compare as numbers)."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", version) if part
    )


class PromptRegistry:
    """Every template under a prompt directory, loaded and validated at construction (fail fast)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise PromptError(f"prompt directory not found: {self.directory}")
        environment = make_environment()
        self._templates: dict[str, dict[str, PromptTemplate]] = {}
        for path in sorted(self.directory.glob("*/*.yaml")):
            template = load_template(path, environment)
            self._templates.setdefault(template.name, {})[template.version] = template
        if not self._templates:
            raise PromptError(f"no prompt templates (<name>/<version>.yaml) found in {self.directory}")

    def get(self, ref: str) -> PromptTemplate:
        """Resolve "name@version", or "name" for its latest version (v1 < v2 < v10)."""
        name, sep, version = ref.partition("@")
        if not name or (sep and not version) or "@" in version:
            raise UnknownPrompt(
                f"malformed prompt ref {ref!r}: use 'name' or 'name@version'. {self._available()}"
            )
        versions = self._templates.get(name)
        if versions is None:
            raise UnknownPrompt(f"unknown prompt {name!r}. {self._available()}")
        if not sep:
            return versions[max(versions, key=_natural_key)]
        if version not in versions:
            raise UnknownPrompt(f"unknown version {version!r} of prompt {name!r}. {self._available()}")
        return versions[version]

    def _available(self) -> str:
        return f"Available: {', '.join(self.list())}"

    def list(self) -> builtins.list[str]:
        """All refs, "name@version", sorted by name then version."""
        return [
            f"{name}@{version}"
            for name in sorted(self._templates)
            for version in sorted(self._templates[name], key=_natural_key)
        ]

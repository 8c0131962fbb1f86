"""Prompt templates as versioned data files (prompts/<name>/<version>.yaml) and their registry."""

from app.prompting.templates import (
    FILTERS,
    InvalidTemplate,
    MissingVariables,
    PromptError,
    PromptMessage,
    PromptRegistry,
    PromptTemplate,
    PromptVariable,
    UnexpectedVariables,
    UnknownPrompt,
    fenced,
    inline,
    load_template,
    neutral_inputs,
)

__all__ = [
    "FILTERS",
    "InvalidTemplate",
    "MissingVariables",
    "PromptError",
    "PromptMessage",
    "PromptRegistry",
    "PromptTemplate",
    "PromptVariable",
    "UnexpectedVariables",
    "UnknownPrompt",
    "fenced",
    "inline",
    "load_template",
    "neutral_inputs",
]

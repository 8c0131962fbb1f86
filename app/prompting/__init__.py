"""Prompt templates as versioned data files (prompts/<name>/<version>.yaml) and their registry."""

from app.prompting.templates import (
    InvalidTemplate,
    MissingVariables,
    PromptError,
    PromptMessage,
    PromptRegistry,
    PromptTemplate,
    PromptVariable,
    UnexpectedVariables,
    UnknownPrompt,
    load_template,
)

__all__ = [
    "InvalidTemplate",
    "MissingVariables",
    "PromptError",
    "PromptMessage",
    "PromptRegistry",
    "PromptTemplate",
    "PromptVariable",
    "UnexpectedVariables",
    "UnknownPrompt",
    "load_template",
]

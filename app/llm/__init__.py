"""LLM backends behind the `LLM` protocol (`base.py`), picked from `settings.llm` by `factory.build_llm`:
`local_provider` (a GGUF model in process), `openai_provider` (any OpenAI-compatible server),
`scripted_provider` (canned answers in process, for tests and demos) and `fallback` (a primary with a
second that takes over). tests/contract/llm_contract.py is what each of them promises."""

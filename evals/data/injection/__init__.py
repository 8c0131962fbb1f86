"""The prompt-injection eval set (see generate.py)."""

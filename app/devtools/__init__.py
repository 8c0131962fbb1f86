"""Developer tools shipped with the app: local stand-ins used by benchmarks, tests and demos."""

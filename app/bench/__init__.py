"""Benchmarks: each module is one `ragserver bench` command (a typer function) with what it measures;
`hostile_files` builds the hostile uploads `bench abuse` and the tests send."""

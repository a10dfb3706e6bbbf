"""Benchmarks: ``python -m bench <name>``.

Each benchmark is a module ``bench/<name>.py`` with ``main(argv: list[str]) -> None``. It measures
flexbridge and a named baseline in the same run and prints one ``name: value`` figure per line
through `bench.report`, the last line being its headline ratio against that baseline. Absolute
times depend on the machine; the ratio is what carries across machines and commits.
"""

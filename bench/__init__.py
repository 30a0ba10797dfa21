"""Benchmarks: each module is a command, run from the checkout's root as
`python -m bench.NAME` (e.g. `python -m bench.personalize --quick`), so that the bench package
and the project's packages are the checkout's. They print a table and write JSON to bench/out.
"""

"""The benchmark harness of issue 10: `make bench` (never part of `make test`).

No module here matches pytest's ``test_*.py`` pattern, so the default run collects
none of it. ``python -m tests.benchmarks.run --help`` lists the options;
docs/benchmarks.md explains the method and holds the latest results.
"""

"""Benchmark-only code, apart from the library the trainer imports: ``scripts/benchmark.py`` runs it.

``run``: the measurements and their table; ``notebook_recipe``: a typical notebook recipe as the baseline;
``synthetic``: NIH-like 1024 px films for measuring at the real scale without the 42 GB release.
"""

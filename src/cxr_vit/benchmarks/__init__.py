"""Benchmark-only code, apart from the library the trainer imports: ``scripts/benchmark.py`` runs it.

``run``: runs the measurements (one module each: ``prepare_cache``, ``cpu_pipeline``, ``worker_memory``,
``flops``, ``gpu``) and ``table`` prints them; ``notebook_recipe``: a typical notebook recipe as the baseline;
``synthetic``: NIH-like 1024 px films for measuring at the real scale without the 42 GB release.
``memory``: training memory per device of ViTs, computed and measured on the CPU (``scripts/memory_table.py``).
"""

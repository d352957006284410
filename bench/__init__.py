"""minivae benchmarks: ``python -m bench --help``."""

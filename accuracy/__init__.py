"""Accuracy checks (Polygraphy Comparator over every backend) and benchmarks."""

"""Reproducible benchmarks that print their figures beside a baseline (`python -m bench`)."""

"""Reproducing published numbers: the registry, `python -m reproduce`, and run diffs (see __main__)."""

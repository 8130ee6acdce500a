"""Changing the catalogue: relabel, re-split, delete, user metadata columns, what a re-scan observed, export.

Every change commits to ``images`` first, then brings every model version in step
(:func:`engine.versions.coverage.bring_in_step`), under the writer lock. Imports ``engine.versions`` and below.
"""

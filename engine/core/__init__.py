"""Foundations every layer may use: the registry helper, the error base, progress events, fault points,
clocks and checksums. Imports nothing else from Lookalike."""

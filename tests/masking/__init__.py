"""Tests of ``engine.masking``."""

"""Tests of ``engine.versions``."""

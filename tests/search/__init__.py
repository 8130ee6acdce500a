"""Tests of ``engine.search``."""

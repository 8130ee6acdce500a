"""Tests of ``engine.core``."""

"""Tests of ``engine.storage``."""

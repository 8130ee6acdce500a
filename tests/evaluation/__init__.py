"""Tests of ``engine.evaluation``."""

"""Tests of ``engine.training``."""

"""Tests of ``engine.media``."""

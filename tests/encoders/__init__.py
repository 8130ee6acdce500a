"""Tests of ``engine.encoders``."""

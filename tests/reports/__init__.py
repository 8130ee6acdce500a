"""Tests of ``engine.reports``."""

"""Tests of ``ingest``."""

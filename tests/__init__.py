"""Lookalike's tests, laid out like the code they test (``tests/search`` tests ``engine.search``)."""

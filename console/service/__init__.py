"""Use cases both front ends call (ingest, search, predict, review, train): one function per use case,
opening nothing the caller did not give it. Imports ``ingest``, ``engine`` and ``schemas``."""

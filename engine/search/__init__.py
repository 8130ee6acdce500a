"""Search: the searcher (LanceDB candidates under ``where`` filters, exact re-ranking), the in-memory index,
the re-rankers and k-NN voting. Imports ``engine.versions`` and below."""

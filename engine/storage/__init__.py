"""The embedded database: LanceDB tables checked against ``schemas``, object-store locations, the writer
lock, vector indexes, ``where`` filters and maintenance. Imports ``schemas``, ``engine.core``."""

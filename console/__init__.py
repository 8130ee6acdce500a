"""Front ends of Lookalike: the ``lookalike`` command line (and, later, the Textual console)."""

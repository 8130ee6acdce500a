"""Front ends of Lookalike: ``cli`` (the ``lookalike`` command) and ``tui`` (the Textual console), both over
``service``, the use cases they share. Dependency rule: cli -> tui -> service -> ingest -> engine -> schemas."""

"""The ``lookalike`` command line: argparse front end over ``console.service``; heavy imports stay inside the
commands so that ``--help`` is instant."""

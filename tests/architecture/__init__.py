"""The shape of the code: layers, cycles, what the CLI imports."""

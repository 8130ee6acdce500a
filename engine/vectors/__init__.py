"""Pure vector math on numpy arrays: query expansion, database-side augmentation, k-reciprocal distances.
Imports only ``engine.core``."""

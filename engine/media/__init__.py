"""Image files: safe decoding (Pillow, bomb and format checks, content hashes) and deterministic folder
scanning. Imports only ``engine.core``."""

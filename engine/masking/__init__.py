"""Foreground masking: mask sets (RLE CSV, PNG folders), apply modes, the U-Net masker, stored maskers and
the masked encoder. Imports ``engine.encoders``, ``engine.storage`` and below."""

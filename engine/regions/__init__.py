"""Regions: the objects inside catalogue images, found by a source (annotations, the masker, a detector, a grid
of windows), embedded by a model version's encoder on their crops, and searched (``lookalike regions``,
``lookalike search --regions``). ``engine.regions.sources`` holds the registry and every source (importing it
completes the registration); ``engine.regions.config`` is light, for the front ends' defaults."""

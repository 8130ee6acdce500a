"""Evaluation: retrieval metrics, multi-label metrics, pipeline comparisons, distractor scorers, calibration
and the review queue. Imports ``engine.search`` and below."""

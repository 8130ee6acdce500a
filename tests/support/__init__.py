"""Helpers the tests share: paths of the shipped data, synthetic rows and vectors, the fault harness."""

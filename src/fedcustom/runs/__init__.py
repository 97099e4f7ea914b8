"""Runs: one experiment in all its modes, study grids, and the run folder's files."""

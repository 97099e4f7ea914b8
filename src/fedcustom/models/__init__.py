"""Backbones by name, task models (classifier, language model) and their metrics."""

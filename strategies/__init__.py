"""Pluggable region-selection strategies (random, diversity, prototype, uncertainty)."""

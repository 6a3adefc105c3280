"""Patch embeddings: encoders by name, the Lightning predict pass over a cohort, per-slide stores, the embedded cohort."""

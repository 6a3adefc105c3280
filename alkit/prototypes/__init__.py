"""Prototypes: sets of class prototype embeddings, crops around objects, and similarity maps of slides to them."""

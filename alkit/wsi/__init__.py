"""Slides and what lies on them: OpenSlide reads at a stated resolution, tissue masks, patch grids, exact cell coverage."""

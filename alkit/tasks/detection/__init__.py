"""Mitotic-figure detection (MITOS_WSI_CMC): RetinaNet detector, point oracle, F1."""

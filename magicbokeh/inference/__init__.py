"""Inference: the any-size pipeline, tiling, colour fix."""

"""Degradation-aware depth: model, distillation, focus selection, depth metrics."""

"""The physics of defocus: circle of confusion, aperture kernels, classical renderers (pure torch)."""

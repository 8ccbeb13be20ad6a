"""Everything that reads files or makes training data: image I/O, degradations, synthetic scenes, datasets."""

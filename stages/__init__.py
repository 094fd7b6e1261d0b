"""The pipeline's stages, one module each, and the machine learning they share."""

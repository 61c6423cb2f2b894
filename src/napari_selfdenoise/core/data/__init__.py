"""Images in the engine's terms: axes and layout, input checks, normalisation, patches, lazy arrays, synthetic data."""

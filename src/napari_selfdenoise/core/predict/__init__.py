"""Prediction: tiles and the inference kernel, the Predictor protocol, streaming to disk and dask clusters."""

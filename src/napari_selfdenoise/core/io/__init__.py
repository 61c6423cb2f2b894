"""Files: image reading and writing, model files, atomic writes and the output rules."""

"""The GUI-free engine: data, patches, masking, networks, training, prediction, model files.

Nothing under this package may import Qt or napari (a test checks ``sys.modules``).
"""

"""``python -m napari_selfdenoise.cli`` (and ``torchrun -m napari_selfdenoise.cli train ...``)."""

import sys

from .app import main

sys.exit(main())

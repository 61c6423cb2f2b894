"""The ``selfdenoise`` command line: train, predict, calibrate, demo and info.

    selfdenoise demo                                   # synthetic data, ~30-60 s on 2 CPU cores
    selfdenoise train noisy.tif --method n2v2 --steps 2000 --out cells.sdmodel
    selfdenoise predict cells.sdmodel noisy.tif --out denoised.ome.tif
    selfdenoise calibrate noisy.tif --out classic.ome.tif --report calibration.json
    selfdenoise export cells.sdmodel --bmz cells.zip   # a bioimage.io (BioImage Model Zoo) package
    selfdenoise predict cells.zip noisy.tif --out denoised.ome.tif   # packages load too
    selfdenoise train more.tif --from cells.sdmodel --steps 500 --out tuned.sdmodel   # fine-tune
    selfdenoise info cells.sdmodel
    torchrun --nproc_per_node 4 -m napari_selfdenoise.cli train noisy.tif --out cells.sdmodel  # 4 GPUs

Exit codes: 0 success; 2 a bad request or bad input (one line ``selfdenoise: error: ...`` on stderr,
no traceback, nothing written); 130 interrupted (Ctrl-C; nothing written); 143 terminated (SIGTERM, from
kill or a cluster scheduler; cleaned up like Ctrl-C). Any other code means a bug.

Every input and output is checked before any work starts (``core.io.outputs.plan_output``: never over an
input, an existing output only with --overwrite), and models and images are written atomically at the
very end (``core.io.atomic``), so a failed or interrupted run leaves no partial files behind.

One module per command (``train``, ``predict``, ``calibrate``, ``noise``, ``export``, ``demo``, ``info``:
each a thin layer that reads its arguments, calls the engine and prints), ``parser`` (arguments and help),
``app`` (``main``: exit codes, SIGTERM), ``progress`` (the bars) and ``common``. Importing the package is
light (no torch): ``main`` imports only the command it runs, and the commands import the engine inside.
"""

from .app import main
from .parser import build_parser

__all__ = ["build_parser", "main"]

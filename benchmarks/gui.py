"""B6 GUI responsiveness and B4 time-to-first-preview, in a real napari viewer (run under Xvfb).

While the Train & Denoise widget trains in its worker, a 10 ms QTimer on the main thread records the gap
between its ticks; the largest gaps are the stalls a user would feel. Also measured: the time from pressing
Train to the first denoised preview, on a 512 x 512 image.

    xvfb-run -a python benchmarks/gui.py --method n2v2 --steps 300 --out benchmarks/results/gui.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from _common import base_parser, machine, save


def main():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--method", default="n2v2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_selfdenoise._qt import settings
    from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

    torch.set_num_threads(args.threads)
    # the widget's defaults, not the remembered settings of whoever runs this
    settings.settings_file = lambda: Path(tempfile.mkdtemp()) / "widgets.json"
    viewer = napari.Viewer()
    app = QApplication.instance()
    noisy = add_noise(fluorescence_image((args.size, args.size), seed=1), "poisson_gaussian", seed=1)
    viewer.add_image(noisy, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-selfdenoise", "Train & Denoise")
    widget.method_picker.setCurrentIndex(widget.method_picker.findData(args.method))
    widget.steps.setValue(args.steps)
    for _ in range(20):
        app.processEvents()

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    pressed = time.perf_counter()
    widget.train_button.click()
    click_seconds = time.perf_counter() - pressed  # the click's own work on the main thread: the viewer waits
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.001)
    total = time.perf_counter() - pressed
    for _ in range(20):
        app.processEvents()
    timer.stop()
    gaps_ms = np.diff(ticks) * 1000
    state = widget.denoiser.state
    results = {
        "benchmark": "B6 GUI responsiveness + B4 time to first preview", "machine": machine(),
        "method": args.method, "image": [args.size, args.size], "steps": state.step,
        "training_seconds": round(state.elapsed, 1), "press_to_result_seconds": round(total, 1),
        "train_click_blocks_ms": round(click_seconds * 1000, 1),
        "first_preview_seconds": None if widget.first_preview_seconds is None
        else round(widget.first_preview_seconds, 2),
        "timer_gaps_ms": {"p50": round(float(np.percentile(gaps_ms, 50)), 1),
                          "p99": round(float(np.percentile(gaps_ms, 99)), 1),
                          "max": round(float(gaps_ms.max()), 1), "ticks": len(ticks),
                          "over_100ms": int((gaps_ms > 100).sum()),
                          # when the 5 largest stalls began, in seconds after pressing Train
                          "largest_at_s": [[round(ticks[i] - pressed, 2), round(float(gaps_ms[i]), 1)]
                                           for i in np.argsort(gaps_ms)[::-1][:5]]},
    }
    viewer.close()
    save(results, args.out)


if __name__ == "__main__":
    main()

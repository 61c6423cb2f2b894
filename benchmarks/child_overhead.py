"""What running a foreign package's TorchScript in a child process (core/trust/sandbox.py) costs, against the
same TorchScript in this process (what napari-selfdenoise did before issue 13), measured in one run.

    python benchmarks/child_overhead.py [--size 512] [--repeats 3] [--out results.json]

The model is one of our own networks exported as TorchScript (a foreign copy of our package: no native
file, no state dict), so the child loads and runs a real U-Net. Reported: the time to start the child
and load the model (first tile included), and the per-prediction time in the child and in process.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch

from napari_selfdenoise.core.nn.networks import build_export_network
from napari_selfdenoise.core.trust.sandbox import ModelProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="tile edge (pixels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.manual_seed(0)
    network = build_export_network({"kind": "unet", "dims": 2, "in_channels": 1, "out_channels": 1, "depth": 2,
                                    "features": 32}).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    weights = buffer.getvalue()
    tile = np.random.default_rng(0).random((1, 1, args.size, args.size), dtype=np.float32)

    starts, child_runs, local_runs = [], [], []
    for _ in range(args.repeats):
        began = time.perf_counter()
        with ModelProcess(weights, "unet.pt") as child:
            first = child.run(tile)
            starts.append(time.perf_counter() - began)
            began = time.perf_counter()
            child.run(tile)
            child_runs.append(time.perf_counter() - began)
        began = time.perf_counter()
        module = torch.jit.load(io.BytesIO(weights)).eval()
        with torch.no_grad():
            local = module(torch.from_numpy(tile)).numpy()
        local_runs.append(time.perf_counter() - began)
    result = {"tile": args.size, "torch_threads": torch.get_num_threads(),
              "child_start_and_first_tile_s": starts, "child_tile_s": child_runs,
              "in_process_load_and_tile_s": local_runs,
              "max_abs_difference": float(np.abs(first - local).max())}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()

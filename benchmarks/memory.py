"""B5: peak memory on big data (see ../shared/BENCHMARKS.md).

Makes uint16 TYX stacks of 2048 x 2048 frames on disk (uncompressed OME-TIFF, written frame by frame)
of about 1, 2 and 4 GB, then runs the ``selfdenoise`` command in a child process and reads the child's
own peak resident memory at its exit (``VmHWM`` of /proc/self/status, which includes the memory-mapped
file pages it holds; ``ru_maxrss`` would also count the parent's memory at the fork):

- train: a tiny 2D N2V2 network (default 8 features, depth 2) for a few steps, patches drawn lazily;
- predict: the whole stack, streamed block by block into an OME-Zarr (and, with ``--tiff``, an OME-TIFF)
  written to disk.

    nice -n 19 python benchmarks/memory.py --sizes 1 2 4 --out benchmarks/results/memory.json

The stacks and outputs go to ``--workdir`` (default: a temporary folder) and are deleted at the end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, base_parser, machine, save

FRAME = (2048, 2048)


def make_stack(path: Path, gigabytes: float, seed: int = 0) -> tuple[int, ...]:
    """A noisy fluorescence-like uint16 TYX stack, written frame by frame (never whole in memory)."""
    import tifffile

    from napari_selfdenoise.core.data.synthetic import fluorescence_image

    frames = max(1, round(gigabytes * 1e9 / (2 * FRAME[0] * FRAME[1])))
    clean = fluorescence_image((512, 512), seed=seed)
    base = np.tile(clean, (FRAME[0] // 512, FRAME[1] // 512)) * 2000 + 100
    rng = np.random.default_rng(seed)
    shape = (frames, *FRAME)
    out = tifffile.memmap(path, shape=shape, dtype="uint16", ome=True, metadata={"axes": "TYX"},
                          photometric="minisblack")
    for t in range(frames):
        shift = np.roll(base, t % 64, axis=1)
        out[t] = np.clip(rng.poisson(shift) + rng.normal(0, 20, FRAME), 0, 65535).astype(np.uint16)
        if t % 16 == 15:
            out.flush()
    out.flush()
    del out
    return shape


def child(argv: list[str], report: Path) -> None:
    """Run the CLI in this process and write its exit code and peak RSS (bytes) to ``report``."""
    from napari_selfdenoise.cli import main

    started = time.perf_counter()
    code = main(argv)
    peak = _peak_rss()
    report.write_text(json.dumps({"code": code, "peak_rss": peak, "seconds": time.perf_counter() - started}))


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: Linux's VmHWM, which (unlike ru_maxrss, kept across
    exec) starts afresh in the new program, so the benchmark's own memory does not count."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux, bytes on macOS


def measure(argv: list[str], workdir: Path, threads: int) -> dict:
    report = workdir / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(report), "--", *argv]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(report.read_text())
    report.unlink()
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result['code']}:\n{proc.stderr[-2000:]}")
    return {"peak_rss_gb": round(result["peak_rss"] / 1e9, 3), "seconds": round(result["seconds"], 1)}


def main() -> None:
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        child(sys.argv[sys.argv.index("--") + 1 :], Path(sys.argv[at + 1]))
        return
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 2, 4], help="stack sizes in GB")
    parser.add_argument("--steps", type=int, default=30, help="training steps")
    parser.add_argument("--tiff", action="store_true", help="also predict into an OME-TIFF")
    parser.add_argument("--features", type=int, default=8, help="U-Net features (default 8)")
    parser.add_argument("--depth", type=int, default=2, help="U-Net depth (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the stacks (deleted after)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="selfdenoise-b5-", dir=args.workdir))
    free = shutil.disk_usage(workdir).free / 1e9
    need = max(args.sizes) * 3.2 + 1  # the stack, its float32 result, a margin
    if free < need:
        raise SystemExit(f"{workdir} has {free:.0f} GB free; B5 needs about {need:.0f} GB")
    results = {"benchmark": "B5 memory", "machine": machine(), "frame": FRAME, "runs": []}
    try:
        for size in args.sizes:
            stack = workdir / f"stack_{size:g}GB.ome.tif"
            started = time.perf_counter()
            shape = make_stack(stack, size)
            print(f"{size:g} GB stack {shape} written in {time.perf_counter() - started:.0f} s", flush=True)
            model = workdir / "tiny.sdmodel"
            run = {"size_gb": round(stack.stat().st_size / 1e9, 2), "shape": shape}
            run["train"] = measure(["train", str(stack), "--method", "n2v2", "--steps", str(args.steps),
                                    "--patch", "64", "--batch", "8", "--features", str(args.features),
                                    "--depth", str(args.depth),
                                    "--steps-per-epoch", str(args.steps), "--out", str(model), "-q"],
                                   workdir, args.threads)
            print(f"  train: {run['train']}", flush=True)
            outputs = [("zarr", workdir / "out.ome.zarr")] + ([("tiff", workdir / "out.ome.tif")] if args.tiff else [])
            for kind, out in outputs:
                run[f"predict_{kind}"] = measure(["predict", str(model), str(stack), "--out", str(out), "-q"],
                                                 workdir, args.threads)
                print(f"  predict -> {kind}: {run[f'predict_{kind}']}", flush=True)
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            stack.unlink()
            results["runs"].append(run)
            save(results, args.out, quiet=True)  # what is done so far
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    save(results, args.out)


if __name__ == "__main__":
    main()

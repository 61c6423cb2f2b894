"""Shared helpers of the hostile-input suite, as fixtures (test modules cannot import a conftest):

- ``run_cli(*args, env=None, cwd=None)``: ``python -m napari_selfdenoise.cli`` in a fresh process ->
  ``CliResult(rc, stdout, stderr)``
- ``one_line_error(result, pattern=None)``: exit code 2, no traceback, one ``selfdenoise: error:`` line
- ``canary``: a path hostile code tries to create; asserted absent when the test ends
- ``digest(path)``: sha256 of a file; ``tree_listing(folder)``: every path under it
- ``foreign_package(path, weights, ...)``: a minimal foreign bioimage.io package (rdf 0.5)
- ``zip_bytes(entries)``: a zip archive in memory

Attack files are built by each test module itself (nothing hostile is stored in the repository)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

CLI_TIMEOUT = 600  # seconds; a safety net against a hang, not a timing assertion


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str


def _run_cli(*args, cwd=None, env: dict | None = None, timeout: float = CLI_TIMEOUT) -> CliResult:
    """``python -m napari_selfdenoise.cli ARGS`` in a fresh process (one torch thread, quiet)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "napari_selfdenoise.cli", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    return CliResult(done.returncode, done.stdout, done.stderr)


def _one_line_error(result: CliResult, pattern: str | None = None) -> str:
    """Exit code 2, no traceback, and exactly one ``selfdenoise: error: ...`` line on stderr (argparse's
    usage lines aside); returns that line. ``pattern`` is a regular expression it must contain."""
    import re

    assert result.rc == 2, (result.rc, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("selfdenoise: error:")]
    others = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith(("selfdenoise: error:", "usage:", " "))]
    assert len(errors) == 1, result.stderr[-3000:]
    assert not others, result.stderr[-3000:]
    if pattern is not None:
        assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.fixture
def canary(tmp_path) -> Path:
    """A path a hostile file tries to create or read; the test asserts it never appears."""
    path = tmp_path / "canary" / "pwned"
    path.parent.mkdir()
    yield path
    assert not path.exists(), f"hostile code ran: {path} exists"


def _digest(path) -> str:
    """sha256 of a file (inputs must be unchanged after any command)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree_listing(folder) -> set[str]:
    """Every path under ``folder`` (to assert that nothing was left behind)."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def _foreign_package(path, weights: bytes, *, source: str = "model.pt", kind: str = "torchscript",
                    authors=("Mallory Example",), sha256: bool = True, rdf_extra: dict | None = None,
                    rdf_text: str | None = None) -> Path:
    """A minimal foreign bioimage.io package (rdf 0.5): one 2D input ``raw`` (b, c=1, y, x; any size
    that is a multiple of 8 from 16) and one output of the same size, ``weights`` as its ``kind`` weights.
    ``rdf_text`` replaces the description verbatim (hostile YAML)."""
    space = lambda a: {"type": "space", "id": a, "size": {"min": 16, "step": 8}}
    ref = lambda a: {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
    channel = {"type": "channel", "channel_names": ["c0"]}
    entry = {"source": source}
    if sha256:
        entry["sha256"] = hashlib.sha256(weights).hexdigest()
    rdf = {"format_version": "0.5.4", "type": "model", "name": "someone else's model",
           "description": "a model from a stranger", "authors": [{"name": a} for a in authors],
           "inputs": [{"id": "raw", "axes": [{"type": "batch"}, channel, space("y"), space("x")]}],
           "outputs": [{"id": "out", "axes": [{"type": "batch"}, channel, ref("y"), ref("x")]}],
           "weights": {kind: entry}, **(rdf_extra or {})}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", rdf_text if rdf_text is not None else yaml.safe_dump(rdf))
        archive.writestr(source, weights)
    return Path(path)


def _zip_bytes(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    """A zip archive in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def run_cli():
    return _run_cli


@pytest.fixture(scope="session")
def one_line_error():
    return _one_line_error


@pytest.fixture(scope="session")
def digest():
    return _digest


@pytest.fixture(scope="session")
def tree_listing():
    return _tree_listing


@pytest.fixture(scope="session")
def foreign_package():
    return _foreign_package


@pytest.fixture(scope="session")
def zip_bytes():
    return _zip_bytes

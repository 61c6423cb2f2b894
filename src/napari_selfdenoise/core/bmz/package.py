"""Reading a bioimage.io package: the zip (with ``modelfile``'s checks), its description (YAML with alias
expansion bounded) and the sha256 of every weights file and attachment."""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ModelFileError
from ..io.modelfile import ZIP_ERRORS, ModelContents, check_zip_file, load_model, open_zip, read_entry, unsafe_name
from .foreign import ForeignModel

RDF = "rdf.yaml"
NATIVE = "selfdenoise.sdmodel"
CONFIG_KEY = "napari-selfdenoise"
_MAX_RDF_BYTES = 4 * 1024**2


def rdf_entry(names) -> str | None:
    """The package's description entry: ``rdf.yaml``, ``bioimageio.yaml`` or ``*.bioimageio.yaml`` at its root."""
    for candidate in (RDF, "bioimageio.yaml"):
        if candidate in names:
            return candidate
    roots = sorted(n for n in names if "/" not in n and n.endswith(".bioimageio.yaml"))
    return roots[0] if roots else None


def is_bmz_package(path) -> bool:
    """Whether ``path`` is a zip holding a bioimage.io description (no error for anything else)."""
    try:
        path = Path(path)
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return rdf_entry(names) is not None and "selfdenoise.json" not in names
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


# A model description has a few hundred YAML nodes; aliases may repeat some, but a "billion laughs" file
# (aliases of aliases) must not expand into millions of them.
MAX_YAML_NODES = 100_000


def load_yaml(text: str, where: str):
    """``yaml.safe_load`` (plain data only) with the document's size after alias expansion bounded:
    the node graph is measured, counting every alias as the copy it stands for, before any of it is
    built; a recursive alias or more than ``MAX_YAML_NODES`` nodes is one ``ModelFileError``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_yaml_expansion(root, where: str) -> None:
    """Count the nodes of the expanded document (depth-first, sizes of shared nodes memoised)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the current node's ancestors: reaching one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _yaml_children(node)
        if finished:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            open_nodes.discard(id(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ModelFileError(f"{where} expands to more than {MAX_YAML_NODES} values through YAML "
                                     "aliases (a \"billion laughs\" file); refusing it")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise ModelFileError(f"{where} holds a recursive YAML alias; refusing it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _yaml_children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


class _Package:
    """The zip, opened with the checks of ``modelfile.open_zip``, and its parsed description."""

    def __init__(self, path):
        self.path = check_zip_file(path, "bioimage.io package")
        self._read_entry = read_entry
        self.archive = None
        try:
            self._open(open_zip, read_entry, ZIP_ERRORS)
        except BaseException:
            if self.archive is not None:
                self.archive.close()
            raise

    def _open(self, open_zip, read_entry, ZIP_ERRORS) -> None:
        try:
            self.archive = open_zip(self.path, self.path)
            self.names = set(self.archive.namelist())
            entry = rdf_entry(self.names)
            if entry is None:
                raise ModelFileError(f"{self.path} is a zip file but not a bioimage.io package (no rdf.yaml)")
            text = read_entry(self.archive, entry, self.path, limit=_MAX_RDF_BYTES)
        except ZIP_ERRORS as err:
            raise ModelFileError(f"{self.path} is damaged or truncated ({err}); download or copy it again") from err
        try:
            self.rdf = load_yaml(text.decode("utf-8"), f"{self.path}: {entry}")
        except ModelFileError:
            raise
        except Exception as err:  # yaml's errors, RecursionError on deep nesting, bad UTF-8
            raise ModelFileError(f"{self.path}: {entry} is not valid YAML "
                                 f"({(str(err).splitlines() or [type(err).__name__])[0][:200]})") from err
        if not isinstance(self.rdf, dict):
            raise ModelFileError(f"{self.path}: {entry} does not describe a model")
        if self.rdf.get("type") != "model":
            raise ModelFileError(f"{self.path} describes a bioimage.io {self.rdf.get('type', 'resource')!r}, "
                                 "not a model")
        version = str(self.rdf.get("format_version", ""))
        if not re.fullmatch(r"0\.[45]\.\d+", version):
            raise ModelFileError(f"{self.path}: unsupported bioimage.io format_version {version or '(none)'!r}; "
                                 "napari-selfdenoise reads model descriptions 0.4.x and 0.5.x")
        self.format = tuple(int(p) for p in version.split("."))

    def read(self, source, what: str, sha256: str | None = None) -> bytes:
        if not isinstance(source, str) or not source:
            raise ModelFileError(f"{self.path}: the {what} has no file name in rdf.yaml")
        if re.match(r"^[a-z][a-z0-9+.-]*://", source):
            raise ModelFileError(f"{self.path}: the {what} is a link ({source}), not a file in the package; "
                                 "download the full package (with its files) from bioimage.io")
        name = source.removeprefix("./")
        if unsafe_name(name):
            raise ModelFileError(f"{self.path}: the {what} {source!r} points outside the package; refusing it")
        if name not in self.names:
            raise ModelFileError(f"{self.path}: the {what} {source!r} is missing from the package")
        try:
            data = self._read_entry(self.archive, name, self.path)
        except ZIP_ERRORS as err:
            raise ModelFileError(f"{self.path} is damaged or truncated ({err}); download or copy it again") from err
        if sha256 and hashlib.sha256(data).hexdigest() != str(sha256).lower():
            raise ModelFileError(f"{self.path}: {source} does not match its sha256 in rdf.yaml (damaged or edited)")
        return data

    def close(self):
        self.archive.close()


@dataclass
class NativeInPackage:
    """A package exported by napari-selfdenoise: the attached native model file's parts (``Denoiser.load``
    builds the full model from them) and the package's metadata."""

    contents: ModelContents
    metadata: dict
    path: Path


def read_bmz(path, trust_code: bool = False, *, describe_untrusted: bool = False) -> NativeInPackage | ForeignModel:
    """The native model file in packages exported by napari-selfdenoise, a ``ForeignModel`` for others.

    A foreign package whose only runnable weights are TorchScript (code written by its author) raises
    ``UntrustedCodeError`` unless ``trust_code``; with ``describe_untrusted`` it is returned instead,
    described but without weights (``selfdenoise info``)."""
    package = _Package(path)
    try:
        rdf = package.rdf
        config = rdf.get("config") if isinstance(rdf.get("config"), dict) else {}
        attachments = rdf.get("attachments") or []
        if isinstance(attachments, dict):  # 0.4 style: {files: [...]}
            attachments = attachments.get("files") or []
        if not isinstance(attachments, list):
            raise ModelFileError(f"{package.path}: the attachments in rdf.yaml are not a list of files")
        native = [a for a in attachments
                  if isinstance(a.get("source") if isinstance(a, dict) else a, str)
                  and (a.get("source") if isinstance(a, dict) else a) in (NATIVE, f"./{NATIVE}")]
        ours = CONFIG_KEY in config and bool(native)
        _verify_files(package, rdf, attachments, ours)
        if ours:
            entry = native[0] if isinstance(native[0], dict) else {"source": native[0]}
            data = package.read(entry["source"], "native model attachment", entry.get("sha256"))
            return NativeInPackage(load_model(f"{package.path} ({NATIVE})", data=data),
                                   {k: rdf.get(k) for k in ("name", "description", "authors", "license", "tags")},
                                   package.path)
        return ForeignModel(package, trust_code, describe_untrusted=describe_untrusted)
    finally:
        package.close()


def _verify_files(package: _Package, rdf: dict, attachments: list, ours: bool) -> None:
    """Check every weights file and attachment in the package against its sha256 in rdf.yaml, whether or
    not it is loaded (an edited ``weights.pt`` must not pass because the native file is used). Our exports
    always write a sha256, so a package that claims to be ours and lacks one is refused; a foreign one may
    lack it (the spec makes it optional)."""
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    entries = [(f"{kind} weights", entry) for kind, entry in weights.items() if isinstance(entry, dict)]
    entries += [("attachment", entry if isinstance(entry, dict) else {"source": entry}) for entry in attachments]
    for what, entry in entries:
        source = entry.get("source")
        if not isinstance(source, str) or re.match(r"^[a-z][a-z0-9+.-]*://", source):
            continue  # links and malformed entries: refused when (and if) they are loaded
        sha256 = entry.get("sha256")
        in_package = (source.removeprefix("./")) in package.names
        if ours and not sha256:
            raise ModelFileError(f"{package.path}: rdf.yaml gives no sha256 for {source}, which every package "
                                 "exported by napari-selfdenoise has; it was edited: refusing it")
        if sha256 and (ours or in_package):
            package.read(source, what, sha256)


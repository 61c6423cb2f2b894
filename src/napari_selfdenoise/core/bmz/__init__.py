"""Model exchange with the BioImage Model Zoo (bioimage.io): export a ``Denoiser`` as a model package
(spec 0.5) and load packages back, ours as full ``Denoiser`` objects, foreign ones for prediction.

An exported package is one zip::

    rdf.yaml                     the description (format_version 0.5.4; readers of newer 0.5.x upgrade it)
    weights.pt                   pytorch_state_dict of networks.ExportDenoiser / ExportNNet (torch.save)
    weights_torchscript.pt       the same network scripted (torch.jit.script), for tools without our code
    environment.yaml             the conda/pip environment the pytorch_state_dict weights need
    test_input.npy               a crop of the user's training data (raw units, float32)
    test_output_<id>.npy         what the package computes from it (denoised; N-net also noise_std)
    cover.png                    the crop, noisy | denoised, 2:1
    README.md                    method, paper, training summary, how to use it, limitations
    selfdenoise.sdmodel          the native model file (weights, normalisation, config, history,
                                 optimizer state): what napari-selfdenoise loads back

The network sees normalised intensities; the normalisation fitted on the training data is written as
the inputs' ``preprocessing`` (``scale_linear``, per channel) and undone by each output's
``postprocessing``, so any bioimage.io consumer gets results in the input's units. The native model header
is also in ``config["napari-selfdenoise"]``.

Loading never unpickles and never imports code named by the package. Every weights file and attachment
is checked against its sha256 in rdf.yaml first (a package that claims to be ours must give one for each).
Ours are read from the attached native file (JSON + safetensors). Foreign ones: the ``pytorch_state_dict``
of one of this package's architectures (``napari_selfdenoise.core.nn.networks.Export*``) is data, read by
``state_dict.read_state_dict``, and preferred; ``torchscript`` weights are code (see ``core.trust.sandbox``): they
are refused unless the user trusts the package (``trust_code=True``), and then checked
(``safetorch.check_torchscript``) and run only in a child process, never here.

Modules: ``export`` (writing a package), ``png`` (its cover), ``package`` (reading one: the zip, the rdf,
the sha256 checks), ``tensors`` (axes, sizes and processing steps of a description) and ``foreign``
(``ForeignModel``). The names below are the public surface; other modules and the tests import them from here.
"""

from .export import (
    DEFAULT_LICENSE,
    FORMAT_VERSION,
    INPUT_ID,
    OUTPUT_DESCRIPTIONS,
    check_metadata,
    clean_name,
    default_metadata,
    default_tags,
    export_bmz,
    parse_author,
    readme,
)
from .foreign import ForeignModel
from .package import (
    CONFIG_KEY,
    MAX_YAML_NODES,
    NATIVE,
    RDF,
    NativeInPackage,
    _Package,
    is_bmz_package,
    load_yaml,
    rdf_entry,
    read_bmz,
)
from .png import cover_png, png_bytes
from .tensors import MAX_AXIS_SIZE

__all__ = ["CONFIG_KEY", "DEFAULT_LICENSE", "FORMAT_VERSION", "INPUT_ID", "MAX_AXIS_SIZE", "MAX_YAML_NODES",
           "NATIVE", "OUTPUT_DESCRIPTIONS", "RDF", "ForeignModel", "NativeInPackage", "_Package", "check_metadata",
           "clean_name", "cover_png", "default_metadata", "default_tags", "export_bmz", "is_bmz_package", "load_yaml",
           "parse_author", "png_bytes", "rdf_entry", "read_bmz", "readme"]

"""The "Export to bioimage.io..." dialog both dock widgets open: package metadata with defaults, the
target file, and the export itself (checked before the dialog closes, so a mistake keeps it open)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from ..core.errors import SelfDenoiseError
from .common import notify_error

LICENSES = ("CC-BY-4.0", "CC0-1.0", "MIT", "BSD-3-Clause", "Apache-2.0")


class ExportDialog(QDialog):
    """Name, description, authors, licence, tags and file of a bioimage.io package for ``denoiser``."""

    def __init__(self, denoiser, default_path: str = "", parent=None):
        from ..core.bmz import default_metadata

        super().__init__(parent)
        self.setWindowTitle("Export to bioimage.io")
        self.denoiser, self.written = denoiser, None
        defaults = default_metadata(denoiser)
        self.name = QLineEdit(defaults["name"])
        self.name.setToolTip("5-128 characters: letters, digits, spaces and _ + - ( )")
        self.description = QPlainTextEdit(defaults["description"])
        self.description.setFixedHeight(70)
        self.authors = QLineEdit("; ".join(defaults["authors"]))
        self.authors.setToolTip("Separated by ';'. Each 'Name', 'Name <email>' or 'Name (affiliation)'")
        self.license = QComboBox()
        self.license.setEditable(True)
        self.license.addItems(LICENSES)
        self.license.setCurrentText(defaults["license"])
        self.license.setToolTip("Licence of the weights: an SPDX identifier")
        self.tags = QLineEdit(", ".join(defaults["tags"]))
        self.tags.setToolTip("Separated by commas")
        self.path = QLineEdit(default_path)
        self.path.setPlaceholderText("package.zip")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(browse)
        form = QFormLayout()
        for label, widget in (("name", self.name), ("description", self.description), ("authors", self.authors),
                              ("licence", self.license), ("tags", self.tags), ("file", row)):
            form.addRow(label, widget)
        self.message = QLabel("The package holds the network, a crop of the training data as test images, "
                              "a cover and a README citing the method's paper.")
        self.message.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.export)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to bioimage.io", self.path.text(),
                                              "bioimage.io package (*.zip)")
        if path:
            self.path.setText(path if path.lower().endswith(".zip") else f"{path}.zip")

    def metadata(self) -> dict:
        return {
            "name": self.name.text().strip(),
            "description": self.description.toPlainText().strip(),
            "authors": [a.strip() for a in self.authors.text().split(";") if a.strip()],
            "license": self.license.currentText().strip(),
            "tags": [t.strip() for t in self.tags.text().split(",") if t.strip()],
        }

    def export(self) -> Path | None:
        """Write the package; on a mistake show it in the dialog (which stays open) and write nothing."""
        from ..core.bmz import export_bmz

        path = self.path.text().strip()
        try:
            if not path:
                raise SelfDenoiseError("choose the file to write (a .zip)")
            self.written = export_bmz(self.denoiser, Path(path).expanduser(), **self.metadata())
        except (SelfDenoiseError, OSError) as err:
            self.message.setText(str(err))
            self.message.setStyleSheet("color: #e5534b")
            return None
        self.accept()
        return self.written


def export_to_bioimageio(parent, denoiser, default_path: str = "", path=None, metadata: dict | None = None):
    """Open the dialog (or, given ``path``, export straight away with ``metadata`` over the defaults);
    returns the written package or None."""
    from napari.utils.notifications import show_info

    from ..core.bmz import export_bmz

    if denoiser is None or not denoiser.trainable or not denoiser.trained:
        notify_error(SelfDenoiseError("train or load a napari-selfdenoise model first (a foreign bioimage.io "
                                      "model is already a package)"))
        return None
    if path is not None:
        try:
            written = export_bmz(denoiser, path, **(metadata or {}))
        except (SelfDenoiseError, OSError) as err:
            notify_error(err)
            return None
    else:
        dialog = ExportDialog(denoiser, default_path, parent)
        if dialog.exec() != QDialog.DialogCode.Accepted or dialog.written is None:
            return None
        written = dialog.written
    show_info(f"bioimage.io package written to {written}")
    return written

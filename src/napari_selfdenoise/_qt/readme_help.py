"""The widgets' documentation link: the README's method table and napari section, shown in a window
(read from the package's metadata, so it works offline and matches the installed version)."""

from __future__ import annotations

from qtpy.QtWidgets import QDialog, QLabel, QTextBrowser, QVBoxLayout

METHODS_LINK = '<a href="readme:methods">Which method? (README: methods and the widget)</a>'


def readme_text() -> str:
    """The README: the checkout's own in a source (editable) install, where the installed metadata
    keeps the text of the day it was installed; else the installed package's ("" when it has none)."""
    from importlib.metadata import PackageNotFoundError, metadata
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[3] / "README.md"  # src/napari_selfdenoise/_qt/ -> root
    if checkout.is_file() and (checkout.parent / "pyproject.toml").is_file():
        return checkout.read_text(encoding="utf-8")
    try:
        meta = metadata("napari-selfdenoise")
    except PackageNotFoundError:
        return ""
    return meta.get_payload() or meta.get("Description") or ""


def methods_help() -> str:
    """The README's method table (its opening, up to the first section) and its napari section."""
    text = readme_text()
    if not text:
        return "The README was not installed with this package; see the project's README.md."
    opening = text.split("\n## ", 1)[0]
    napari_part = text.split("\n## napari\n", 1)[1].split("\n## ", 1)[0] if "\n## napari\n" in text else ""
    return opening + ("\n\n## napari\n" + napari_part if napari_part else "")


class HelpDialog(QDialog):
    def __init__(self, markdown: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("napari-selfdenoise: methods")
        self.resize(760, 520)
        self.browser = QTextBrowser()
        self.browser.setMarkdown(markdown)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)

    def text(self) -> str:
        return self.browser.toMarkdown()


def methods_link(parent) -> QLabel:
    """A link that opens the README's method table in a window."""
    label = QLabel(METHODS_LINK)
    label.setToolTip("What each method does and when to use it: the README's method table, in a window")
    label.linkActivated.connect(lambda *_: HelpDialog(methods_help(), parent).exec())
    return label

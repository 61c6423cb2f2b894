"""Fixtures shared by the napari tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors():
    """Error notifications shown during the test (napari's own notification manager)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)
    return lambda: [n.message for n in notification_manager.records[start:]
                    if n.severity == NotificationSeverity.ERROR]


@pytest.fixture(autouse=True)
def settings_file(tmp_path, monkeypatch):
    """The widgets' remembered settings go to this test's own folder: no test sees another's (or the
    user's) last method and budget."""
    from napari_selfdenoise._qt import settings

    path = tmp_path / "config" / "widgets.json"
    monkeypatch.setattr(settings, "settings_file", lambda: path)
    return path

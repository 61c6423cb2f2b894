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

"""All of the plugin's widgets docked at once fit a 1366x768 laptop screen."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

WIDGETS = ("Segment", "Compare attention levels", "Click to segment", "Fine-tune", "Label names and colours")


def test_every_widget_docked_fits_a_laptop_screen(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = [viewer.window.add_plugin_dock_widget("napari-aunet", name)[1] for name in WIDGETS]
    window = viewer.window._qt_window
    hint = window.minimumSizeHint()
    assert hint.width() <= 1366 and hint.height() <= 768, (hint.width(), hint.height())
    for widget in widgets:  # each scrolls inside its dock and asks for a narrow column
        assert widget.native.sizeHint().width() <= 420
        assert widget.native.minimumSizeHint().height() < 150
    # rows keep their captions (a shadowed magicgui attribute once dropped them all in two widgets)
    from qtpy.QtWidgets import QLabel

    for widget, caption in ((widgets[3], "corrected labels"), (widgets[4], "labels layer"), (widgets[0], "model")):
        assert caption in [label.text() for label in widget.inner.findChildren(QLabel)], caption
    window.resize(1366, 768)
    assert window.size().height() <= 768


def test_tables_show_numbers_as_the_widgets_format_them(make_napari_viewer):
    """'0.37' stays '0.37' (magicgui's own delegate would print 0.3700, and 8.000e-03 for 0.008)."""
    from qtpy.QtCore import QLocale

    viewer = make_napari_viewer()
    _, tune = viewer.window.add_plugin_dock_widget("napari-aunet", "Fine-tune")
    tune._table.value = {"data": [["csf", "0.008", "0.370", "–", "0.5"]], "index": ["1"],
                         "columns": ["class", "Dice old", "Dice new", "IoU old", "IoU new"]}
    table = tune._table.native
    shown = [table.itemDelegate().displayText(table.item(0, c).data(0), QLocale()) for c in range(5)]
    assert shown == ["csf", "0.008", "0.370", "–", "0.5"]

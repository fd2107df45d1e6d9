"""Widgets that fit a laptop screen (1366x768) with every widget of the plugin docked.

Each widget scrolls, so a dock asks for little height and napari can stack five of them, and asks for a narrow
column, so the canvas keeps most of the window; combo boxes size to a few characters instead of their longest
choice; tables stretch their columns to the dock's width and drop the row numbers; long labels wrap.
"""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QHeaderView,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QStyledItemDelegate,
    QTableWidget,
    QWidget,
)

MIN_COMBO_CHARACTERS = 12
WRAPPED_MIN_WIDTH = 220  # px of a paragraph (a model card, a status line)
PREFERRED_WIDTH = 400  # px a dock asks for (the user can widen it); wrapped paragraphs would ask for ~600


class _NarrowScrollArea(QScrollArea):
    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        hint = super().sizeHint()
        return QSize(min(hint.width(), max(PREFERRED_WIDTH, self.minimumWidth())), hint.height())


class ScrollingContainer(Container):
    """A labelled magicgui Container inside a vertical scroll area, which is what napari docks (``native``).

    (magicgui's own ``scrollable`` option does not survive docking: napari docks the inner widget.) :attr:`inner`
    is the widget holding the rows.
    """

    def __init__(self) -> None:
        super().__init__(labels=True)
        self._scroll = _NarrowScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self._scroll.setWidget(super().native)

    @property
    def native(self) -> QWidget:
        scroll = self.__dict__.get("_scroll")  # magicgui asks for ``native`` while it builds the container
        return scroll if scroll is not None else super().native

    def start_worker(self, worker) -> None:
        """Start a napari ``thread_worker`` that stops, quietly, when this widget goes (its viewer closed).

        A worker's queued signals would otherwise reach widgets whose Qt objects are gone (a traceback per signal)
        and keep computing for a window that no longer exists."""

        def stop(*_) -> None:
            for signal in (worker.yielded, worker.returned, worker.errored, worker.aborted, worker.finished):
                try:
                    signal.disconnect()
                except (TypeError, RuntimeError):  # nothing connected
                    pass
            worker.quit()

        def forget() -> None:
            try:
                self._scroll.destroyed.disconnect(stop)
            except (TypeError, RuntimeError):
                pass

        self._scroll.destroyed.connect(stop)
        worker.finished.connect(forget)
        worker.start()

    @property
    def inner(self) -> QWidget:
        return self._scroll.widget()

    def fit_screen(self) -> None:
        """Call at the end of ``__init__``: narrow combo boxes, stretched tables, wrapped labels."""
        inner = self.inner
        for combo in inner.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(MIN_COMBO_CHARACTERS)
            # the layout takes an explicit minimum over the size hint (which still follows the longest choice)
            combo.setMinimumWidth(combo.fontMetrics().horizontalAdvance("X") * MIN_COMBO_CHARACTERS)
        for table in inner.findChildren(QTableWidget):
            table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
            table.verticalHeader().setVisible(False)
            # magicgui's delegate re-formats every number-like cell ("0.37" -> "0.3700", "0.008" -> "8.000e-03");
            # the widgets put in text already formatted for a narrow column
            table.setItemDelegate(QStyledItemDelegate(table))
            row = table.parentWidget()  # the labelled row: its (empty) caption cell would take a third of the width
            for caption in row.findChildren(QLabel) if row is not inner else ():
                if caption.parentWidget() is row and not caption.text():
                    caption.setVisible(False)
        for label in inner.findChildren(QLabel):
            label.setWordWrap(True)
            # a policy that may shrink: the layout then takes the wrapped minimum, not the one-paragraph width
            policy = label.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Preferred)
            label.setSizePolicy(policy)
            if len(label.text()) > 40:  # paragraphs: the height they ask for is the one at their minimum width
                label.setMinimumWidth(WRAPPED_MIN_WIDTH)
        for widget in (*reversed(inner.findChildren(QWidget)), inner):  # layouts cache their old minimum
            widget.updateGeometry()
            if widget.layout() is not None:
                widget.layout().invalidate()
        scrollbar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(inner.minimumSizeHint().width() + scrollbar)

"""Autosave of label edits, and their recovery after a crash, a killed process or a closed window.

While a Labels layer over a scan opened from a file is edited (painted, erased, filled), its data is saved every
:data:`EDITS_PER_SAVE` strokes and at most :data:`SECONDS_PER_SAVE` seconds after an unsaved stroke, atomically and
in a background thread, to the user's data directory::

    <user data dir>/napari-aunet/recovery/<scan name>-<hash of its path>/<layer name>-<hash>.nii.gz  (+ .json)

The labels are written in the scan's file order with its affine, like File › Save; the JSON beside them names the
layer, the scan, the time, the number of strokes, the slices painted (so fine-tuning still knows which slices are
annotated) and the class names. Opening that scan again (in a later session) offers to restore or discard them;
saving the layer through our writer removes its recovery file.

A labels layer is "over a scan" when it carries the scan's placement (Segment's output, a labels file opened by our
reader) or, like napari's *New labels layer*, has the shape, scale and translate of an image opened from a file.
Undo and redo emit no paint event in napari: they reach the recovery file with the next stroke.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic
from ._orientation import META_KEY

__all__ = [
    "EDITS_PER_SAVE",
    "SECONDS_PER_SAVE",
    "RecoveryEntry",
    "RecoveryKeeper",
    "discard",
    "ensure_keeper",
    "entries_for",
    "forget_saved",
    "recovery_root",
]

#: strokes after which a layer's edits are saved
EDITS_PER_SAVE = 5
#: the longest time (s) an edit stays unsaved
SECONDS_PER_SAVE = 60
#: this process: entries it wrote itself are not offered back to it
SESSION = uuid.uuid4().hex
_KEEPERS: weakref.WeakSet = weakref.WeakSet()


def recovery_root() -> Path:
    """``<user data dir>/napari-aunet/recovery`` (``$XDG_DATA_HOME`` on Linux), made on the first save."""
    import platformdirs

    return platformdirs.user_data_path("napari-aunet", appauthor=False) / "recovery"


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "layer"


def scan_folder(source: str | os.PathLike) -> Path:
    """The recovery folder of one scan file."""
    from .io import scan_name

    path = os.path.abspath(os.fspath(source))
    return recovery_root() / f"{_safe(scan_name(path))}-{_key(path)}"


@dataclass(frozen=True)
class RecoveryEntry:
    """One layer's autosaved edits: a NIfTI labels file and its description."""

    labels_path: Path
    layer_name: str
    source: str
    saved_at: float
    edits: int
    session: str
    painted: dict[int, list[int]] = field(default_factory=dict)  # display axis -> slices painted
    class_names: dict[int, str] = field(default_factory=dict)

    @property
    def json_path(self) -> Path:
        return _json_path(self.labels_path)

    def describe(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.saved_at))
        strokes = f"{self.edits} stroke{'s' if self.edits != 1 else ''}"
        return f"'{self.layer_name}' ({strokes}, saved {when})"


def _json_path(labels_path: Path) -> Path:
    return labels_path.with_name(labels_path.name[: -len(".nii.gz")] + ".json")


def entry_path(source: str | os.PathLike, layer_name: str) -> Path:
    return scan_folder(source) / f"{_safe(layer_name)}-{_key(layer_name)}.nii.gz"


def entries_for(source: str | os.PathLike) -> list[RecoveryEntry]:
    """The recovery entries of a scan file, oldest first; unreadable or incomplete ones are skipped."""
    folder = scan_folder(source)
    if not folder.is_dir():
        return []
    entries = []
    for description in folder.glob("*.json"):
        labels_path = description.with_name(description.name[: -len(".json")] + ".nii.gz")
        try:
            record = json.loads(description.read_text(encoding="utf-8"))
            entry = RecoveryEntry(
                labels_path=labels_path,
                layer_name=str(record["layer"]),
                source=str(record["source"]),
                saved_at=float(record["saved_at"]),
                edits=int(record["edits"]),
                session=str(record["session"]),
                painted={int(k): [int(i) for i in v] for k, v in record.get("painted", {}).items()},
                class_names={int(k): str(v) for k, v in record.get("class_names", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if labels_path.is_file():
            entries.append(entry)
    return sorted(entries, key=lambda e: e.saved_at)


def write_entry(
    source: str,
    layer_name: str,
    data: np.ndarray,
    placement: dict[str, Any],
    *,
    edits: int,
    painted: dict[int, list[int]],
    class_names: dict[int, str],
) -> RecoveryEntry:
    """Save display-ordered ``data`` with the scan's ``placement`` metadata (file order, its affine), then the JSON.

    Both files are written atomically, the labels first: an entry is listed only once its JSON exists."""
    from ._writer import layer_file_data
    from .io import save_labels

    path = entry_path(source, layer_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr, reference, affine = layer_file_data(data, {"metadata": placement}, labels=True)
    save_labels(path, arr, reference=reference, affine=affine)
    entry = RecoveryEntry(path, layer_name, os.fspath(source), time.time(), edits, SESSION, painted, class_names)
    record = {
        "layer": layer_name, "source": entry.source, "saved_at": entry.saved_at, "edits": edits,
        "session": SESSION, "painted": {str(k): v for k, v in painted.items()},
        "class_names": {str(k): v for k, v in class_names.items()},
    }
    write_atomic(entry.json_path, json.dumps(record, indent=1).encode("utf-8"))
    return entry


def discard(entry: RecoveryEntry) -> None:
    """Remove an entry's files (the JSON first, so a half-removed entry is never listed) and an empty folder."""
    entry.json_path.unlink(missing_ok=True)
    entry.labels_path.unlink(missing_ok=True)
    try:
        entry.labels_path.parent.rmdir()
    except OSError:
        pass


def _placement(layer) -> dict[str, Any] | None:
    """The layer's placement metadata when it comes from (or is placed over) a scan file, else None."""
    from ._segment_widget import _copy_placement_metadata

    placement = _copy_placement_metadata(layer) if isinstance(layer.metadata, dict) else {}
    return placement if placement.get(META_KEY, {}).get("source") else None


@dataclass
class _Watched:
    layer: Any  # weakref to the Labels layer
    name: str  # the layer's name when first watched: the entry's name
    edits: int = 0  # strokes since the layer was watched (or restored)
    unsaved: int = 0  # strokes not yet in the recovery file


class RecoveryKeeper:
    """Watches the Labels layers of one viewer, autosaves their edits and offers recovery when a scan is opened."""

    def __init__(self, viewer, state) -> None:
        self._viewer = weakref.ref(viewer)
        self._state = state
        self._watched: dict[int, _Watched] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aunet-recovery")
        self._pending: list[Future] = []
        self._offered: set[str] = set()
        self._failed: set[int] = set()
        self.offer_dialog = None  # the open "recovered edits" dialog, if any
        self._timer = None
        try:
            from qtpy.QtCore import QTimer
            from qtpy.QtWidgets import QApplication

            if QApplication.instance() is not None:
                self._timer = QTimer()
                self._timer.setSingleShot(True)
                self._timer.timeout.connect(self.save_unsaved)
        except ImportError:  # pragma: no cover - napari always brings a Qt binding in the GUI
            pass
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        _KEEPERS.add(self)
        for layer in list(viewer.layers):
            self._adopt(layer)

    # ----- watching -------------------------------------------------------------------------------------------
    def _on_inserted(self, event) -> None:
        self._adopt(event.value)

    def _adopt(self, layer) -> None:
        from napari.layers import Labels

        if isinstance(layer, Labels):
            self.watch(layer)
        placement = _placement(layer)
        if placement is not None:
            self.offer(placement[META_KEY]["source"])

    def watch(self, layer, name: str | None = None) -> None:
        """Autosave ``layer``'s strokes (under ``name``, default its current name)."""
        if id(layer) in self._watched:
            return
        key = id(layer)
        self._watched[key] = _Watched(weakref.ref(layer), name or layer.name)
        self._state.track_painting(layer)
        layer.events.paint.connect(lambda event: self._on_paint(key))

    def _on_removed(self, event) -> None:
        watched = self._watched.get(id(event.value))
        if watched is not None and watched.unsaved:
            self._save(watched)  # napari cannot undo a deleted layer: its last strokes are kept
        self._watched.pop(id(event.value), None)

    def _on_paint(self, key: int) -> None:
        watched = self._watched.get(key)
        if watched is None:
            return
        watched.edits += 1
        watched.unsaved += 1
        if watched.unsaved >= EDITS_PER_SAVE:
            # napari emits the event of a single (not dragged) stroke before it writes the voxels
            self._later(lambda: self._save(watched))
        elif self._timer is not None and not self._timer.isActive():
            self._timer.start(int(SECONDS_PER_SAVE * 1000))

    def _later(self, call) -> None:
        if self._timer is None:
            call()
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, call)

    # ----- saving ---------------------------------------------------------------------------------------------
    def scan_of(self, layer) -> tuple[str, dict[str, Any]] | None:
        """The scan file under a labels layer and its placement metadata, or None."""
        own = _placement(layer)
        if own is not None:
            return own[META_KEY]["source"], own
        viewer = self._viewer()
        if viewer is None:
            return None
        from napari.layers import Image

        shape = tuple(layer.data.shape)
        for other in viewer.layers:
            placement = _placement(other) if isinstance(other, Image) else None
            if (
                placement is not None
                and tuple(other.data.shape) == shape
                and np.allclose(other.scale, layer.scale)
                and np.allclose(other.translate, layer.translate)
            ):
                return placement[META_KEY]["source"], placement
        return None

    def save_unsaved(self) -> None:
        """Save every layer with strokes not yet in its recovery file (the timer's job)."""
        for watched in list(self._watched.values()):
            if watched.unsaved:
                self._save(watched)

    def _save(self, watched: _Watched) -> None:
        from ._layers import layer_class_names

        layer = watched.layer()
        if layer is None:
            return
        scan = self.scan_of(layer)
        if scan is None:
            return
        source, placement = scan
        # everything read from the layer is read here, in the GUI thread, which may paint on while the thread writes
        data = np.array(layer.data, copy=True)
        painted = {axis: sorted(indices) for axis, indices in self._state.painted.get(id(layer), {}).items()}
        class_names = layer_class_names(layer)
        edits, watched.unsaved = watched.edits, 0
        future = self._executor.submit(write_entry, source, watched.name, data, placement, edits=edits,
                                       painted=painted, class_names=class_names)
        key = id(layer)
        future.add_done_callback(lambda done: self._written(key, done))
        self._pending = [f for f in self._pending if not f.done()] + [future]

    def _written(self, key: int, future: Future) -> None:
        watched = self._watched.get(key)
        error = future.exception()
        if error is None:
            self._failed.discard(key)
        elif key not in self._failed:
            self._failed.add(key)
            from napari.utils.notifications import show_warning

            name = watched.name if watched is not None else "labels"
            show_warning(f"Autosave of '{name}' failed ({error}); save the layer yourself (File › Save Selected Layers).")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for the saves under way (tests, and before the process ends)."""
        if self._timer is not None:
            from qtpy.QtWidgets import QApplication

            QApplication.processEvents()  # saves queued behind the last stroke
        for future in list(self._pending):
            future.result(timeout=timeout)

    def forget(self, layer) -> None:
        """``layer`` was saved by the user: its recovery file goes, nothing is pending."""
        watched = self._watched.get(id(layer))
        if watched is None:
            return
        self.flush()
        watched.unsaved = 0
        scan = self.scan_of(layer)
        for entry in entries_for(scan[0]) if scan is not None else ():
            if entry.layer_name == watched.name:
                discard(entry)

    # ----- recovery -------------------------------------------------------------------------------------------
    def offer(self, source: str) -> None:
        """When earlier sessions left edits of ``source``, ask whether to restore or discard them."""
        if source in self._offered:
            return
        entries = [e for e in entries_for(source) if e.session != SESSION]
        if not entries:
            return
        self._offered.add(source)
        viewer = self._viewer()
        lines = "\n".join(f"• {entry.describe()}" for entry in entries)
        text = (
            f"Unsaved label edits of '{os.path.basename(source)}' were kept from an earlier session:\n{lines}\n\n"
            "Restore them as labels layers, or discard them?"
        )
        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        if window is None:
            from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

            notification_manager.dispatch(Notification(
                text, NotificationSeverity.WARNING,
                actions=[("Restore", lambda *_: self.restore(entries)), ("Discard", lambda *_: self.discard(entries))],
            ))
            return
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Question, "Recovered label edits", text, QMessageBox.NoButton, window)
        restore = box.addButton("Restore", QMessageBox.AcceptRole)
        remove = box.addButton("Discard", QMessageBox.DestructiveRole)
        box.addButton("Later", QMessageBox.RejectRole)
        box.setDefaultButton(restore)

        def answered(button) -> None:
            self.offer_dialog = None
            if button is restore:
                self.restore(entries)
            elif button is remove:
                self.discard(entries)

        box.buttonClicked.connect(answered)
        box.setModal(False)
        self.offer_dialog = box
        box.show()

    def restore(self, entries: list[RecoveryEntry]) -> list:
        """Add each entry as a labels layer over its scan (a free name; painted slices and class names kept)."""
        from napari.utils.notifications import show_info, show_warning

        from ._layers import class_colors
        from ._reader import read_scan
        from .io import ScanReadError

        viewer = self._viewer()
        if viewer is None:
            return []
        added = []
        for entry in entries:
            try:
                ((data, kwargs, _),) = read_scan(entry.labels_path, "labels", name=entry.layer_name)
            except ScanReadError as exc:
                show_warning(f"Cannot restore {entry.describe()}: {exc}")
                continue
            kwargs["metadata"][META_KEY]["source"] = entry.source
            name = entry.layer_name
            while name in viewer.layers:
                name = f"{name} (recovered)"
            kwargs["name"] = name
            if entry.class_names:
                from napari.utils.colormaps import DirectLabelColormap

                index = sorted(entry.class_names)
                kwargs["features"] = {"index": index, "class": [entry.class_names[i] for i in index]}
                kwargs["colormap"] = DirectLabelColormap(color_dict=class_colors())
            layer = viewer.add_labels(data, **kwargs)  # watched as it is inserted
            self._watched[id(layer)].name = entry.layer_name  # later saves replace this entry
            self._state.painted[id(layer)] = {axis: set(indices) for axis, indices in entry.painted.items()}
            added.append(layer)
        if added:
            show_info(f"Restored {len(added)} labels layer{'s' if len(added) > 1 else ''}; save them with "
                      "File › Save Selected Layers (saving removes the recovery copy).")
        return added

    def discard(self, entries: list[RecoveryEntry]) -> None:
        for entry in entries:
            discard(entry)


def ensure_keeper(viewer) -> RecoveryKeeper | None:
    """The viewer's keeper (made with its shared state); None when there is no viewer."""
    from ._state import state_for

    if viewer is None or not hasattr(viewer, "layers"):
        return None
    return state_for(viewer).keeper


def watch_current_viewer() -> None:
    """Start the keeper of the viewer a scan is being opened in (the reader and samples call this)."""
    try:
        from napari import current_viewer
    except ImportError:  # pragma: no cover
        return
    ensure_keeper(current_viewer())


def forget_saved(data: Any, attributes: dict[str, Any]) -> None:
    """The writer saved a labels layer: remove the recovery file of the live layer holding ``data``."""
    for keeper in list(_KEEPERS):
        for watched in list(keeper._watched.values()):
            layer = watched.layer()
            if layer is not None and (layer.data is data or (layer.name == attributes.get("name")
                                                             and np.shape(layer.data) == np.shape(data))):
                keeper.forget(layer)

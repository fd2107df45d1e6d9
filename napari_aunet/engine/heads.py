"""Any model as a starting point for any classes: a new output head for the user's classes.

Fine-tuning from a bundled or saved model onto labels whose classes differ keeps the encoders, the decoders
and the attention gates and replaces only the 1x1 output convolution (``head``). Rows of classes whose names
match (case and spacing ignored) keep their trained weights; the other rows start from a fresh initialisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from .model import AttentionUNet


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def class_names_for_labels(
    highest_label: int, model_names: tuple[str, ...], names: Mapping[int, str] | None = None
) -> tuple[str, ...]:
    """Class names for label values ``0 .. max(highest_label, named values)``.

    ``names`` (label value -> name, from an ITK-SNAP label file or a labels layer) wins where given. Without a
    name, a value the model already has keeps the model's name (the user is correcting the model's own
    classes) and a value beyond it is called ``label N``. Value 0 is always ``background``.
    """
    names = {int(value): str(name).strip() for value, name in (names or {}).items() if str(name).strip()}
    count = max([int(highest_label), 1, *names]) + 1
    result = []
    for value in range(count):
        if value == 0:
            result.append("background")
        elif value in names:
            result.append(names[value])
        elif value < len(model_names):
            result.append(model_names[value])
        else:
            result.append(f"label {value}")
    return tuple(result)


@dataclasses.dataclass(frozen=True)
class HeadChange:
    """What :func:`with_classes` did, for the one line the user reads."""

    old: tuple[str, ...]
    new: tuple[str, ...]
    kept: tuple[str, ...]  # classes whose trained head rows were reused

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def message(self, model_name: str = "the model") -> str:
        if not self.changed:
            return f"{model_name}'s classes: {', '.join(self.new[1:])}"
        added = [name for name in self.new if name not in self.kept]
        return (f"{model_name} has classes {', '.join(self.old)}: new output head for {len(self.new)} classes "
                f"on its encoders, decoders and gates (kept: {', '.join(self.kept) or 'none'}; "
                f"new: {', '.join(added) or 'none'})")


def head_change(old: tuple[str, ...], new: tuple[str, ...]) -> HeadChange:
    """What :func:`with_classes` does to a model with classes ``old`` for labels with classes ``new``."""
    old_keys = {_key(name) for name in old}
    return HeadChange(tuple(old), tuple(new), kept=tuple(name for name in new if _key(name) in old_keys))


def with_classes(model: AttentionUNet, class_names: tuple[str, ...]) -> tuple[AttentionUNet, HeadChange]:
    """A copy of ``model`` whose head predicts ``class_names``; ``model`` itself is never changed.

    The copy has every weight of ``model`` except the head, whose rows are reused for classes with the same
    name and freshly initialised for the others (PyTorch's default initialisation of a new convolution).
    """
    class_names = tuple(class_names)
    old = tuple(model.config.class_names)
    change = head_change(old, class_names)
    if not change.changed:
        clone = AttentionUNet(model.config)
        clone.load_state_dict(model.state_dict())
        return clone, change
    if len(class_names) < 2:
        raise ValueError("a model needs background plus at least one class")
    if len({_key(n) for n in class_names}) != len(class_names):
        raise ValueError(f"class names must differ from each other: {', '.join(class_names)}")
    config = dataclasses.replace(model.config, out_channels=len(class_names), class_names=class_names)
    adapted = AttentionUNet(config)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("head.")}
    missing, _ = adapted.load_state_dict(state, strict=False)
    assert all(key.startswith("head.") for key in missing), missing
    old_rows = {_key(name): row for row, name in enumerate(old)}
    with torch.no_grad():
        for row, name in enumerate(class_names):
            if name in change.kept:
                adapted.head.weight[row] = model.head.weight[old_rows[_key(name)]]
                adapted.head.bias[row] = model.head.bias[old_rows[_key(name)]]
    adapted.train(model.training)
    return adapted, change

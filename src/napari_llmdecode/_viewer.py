"""What a reader cannot ask for in layer keyword arguments: the salience colourbar.

napari has no layer keyword for a layer's colourbar or its title (the layer-name
overlay), so a file would open without them until the Salience explorer switches them
on. :func:`show_on_insert` waits for the layers of a file in the running viewer and
switches them on as napari adds them, once; nothing happens where napari is not
running (nothing here imports napari or Qt).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["show_colourbar", "show_on_insert"]


def show_colourbar(layer: Any) -> None:
    """Show a salience layer's colourbar, titled by the layer's name just above it."""
    layer.colorbar.visible = True
    title = getattr(layer, "name_overlay", None)  # napari >= 0.6
    if title is not None:
        title.position = layer.colorbar.position
        title.font_size = 9
        title.visible = True


def show_on_insert(layers: Sequence[tuple[Any, dict[str, Any], str]]) -> None:
    """Show the colourbars of these layer data tuples' salience layers once napari's
    current viewer adds them (a reader's layers are added right after it returns).

    Does nothing when napari is not imported or has no viewer.
    """
    napari = sys.modules.get("napari")
    if napari is None:
        return
    try:
        viewer = napari.current_viewer()
    except Exception:  # napari without a Qt viewer: nothing to show
        return
    if viewer is None:
        return
    from ._layers import layer_role

    wanted = set()
    for _, kwargs, _ in layers:
        role, data = layer_role(kwargs.get("metadata", {}))
        if role == "salience":
            wanted.add(id(data))
    if not wanted:
        return

    def on_inserted(event: Any) -> None:
        layer = event.value
        role, data = layer_role(getattr(layer, "metadata", {}))
        if role != "salience" or id(data) not in wanted:
            return
        wanted.discard(id(data))
        show_colourbar(layer)
        if not wanted:
            viewer.layers.events.inserted.disconnect(on_inserted)

    viewer.layers.events.inserted.connect(on_inserted)

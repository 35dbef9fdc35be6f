"""What a reader cannot ask for in layer keyword arguments.

napari has no layer keyword for a layer's colourbar or its title (the layer-name
overlay), none to lay text out again when the zoom changes, and none to hide a layer in
3D. So a file would open without a colourbar until the Salience explorer switches it on,
its rank labels would be laid out for one zoom only, and the outlines of every ROI of
every plane would pile up in 3D. :func:`show_on_insert` waits for the layers of a file in
the running viewer and sets these up as napari adds them; nothing happens where napari
is not running (nothing here imports napari or Qt).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "follow_zoom",
    "hide_colourbar",
    "hide_in_3d",
    "name_axes",
    "relayout_ranks",
    "set_up",
    "show_colourbar",
    "show_on_insert",
]

#: Metadata flags (in our ``metadata["llmdecode"]``) of what has been set up on a layer.
_FOLLOWING = "follows_zoom"
_HIDES_IN_3D = "hides_in_3d"


def show_colourbar(layer: Any) -> None:
    """Show a salience layer's colourbar, titled by the layer's name beside it."""
    layer.colorbar.visible = True
    title = getattr(layer, "name_overlay", None)  # napari >= 0.6
    if title is not None:
        title.position = layer.colorbar.position
        title.font_size = 9
        title.visible = True


def hide_colourbar(layer: Any) -> None:
    """Hide a salience layer's colourbar and its title."""
    layer.colorbar.visible = False
    title = getattr(layer, "name_overlay", None)
    if title is not None:
        title.visible = False


def relayout_ranks(layer: Any) -> None:
    """Lay a rank-label layer out again for its current zoom (``layer.scale_factor``)."""
    from ._layers import META_KEY, layer_role, rank_labels

    _, data = layer_role(layer.metadata)
    values = layer.metadata.get(META_KEY, {}).get("values")
    if data is None or values is None:
        return
    coords, feats = rank_labels(data, values, pixel=float(layer.scale_factor))
    if coords.shape == np.shape(layer.data) and np.allclose(coords, layer.data):
        return
    layer.data = coords
    layer.features = feats
    layer.refresh_text()


def follow_zoom(layer: Any) -> None:
    """Keep a rank-label layer laid out for the zoom: its text has a fixed size on screen,
    so label places and halo offsets (in world units) change with the zoom. Once per
    layer."""
    from ._layers import META_KEY

    info = layer.metadata.get(META_KEY, {})
    if info.get(_FOLLOWING):
        return
    info[_FOLLOWING] = True
    layer.events.scale_factor.connect(lambda _event=None: relayout_ranks(layer))
    relayout_ranks(layer)


def hide_in_3d(viewer: Any, layer: Any) -> None:
    """Hide ``layer`` while the viewer shows 3D, and give it back its visibility in 2D
    (the outlines of every ROI of every plane only pile up in 3D). Once per layer."""
    from ._layers import META_KEY

    info = layer.metadata.get(META_KEY, {})
    if info.get(_HIDES_IN_3D):
        return
    info[_HIDES_IN_3D] = True
    state = {"visible_2d": layer.visible}

    def on_ndisplay(_event: Any = None) -> None:
        if layer not in viewer.layers:
            viewer.dims.events.ndisplay.disconnect(on_ndisplay)
            return
        if viewer.dims.ndisplay == 3:
            state["visible_2d"] = layer.visible
            layer.visible = False
        else:
            layer.visible = state["visible_2d"]

    viewer.dims.events.ndisplay.connect(on_ndisplay)
    if viewer.dims.ndisplay == 3:
        on_ndisplay()


def name_axes(viewer: Any, labels: tuple[str, ...]) -> None:
    """Name the viewer's last axes after our layers' (``plane``, ``y``, ``x``) where they
    still have napari's numbered defaults: napari >= 0.9 does this itself from the
    layers' ``axis_labels``, older versions show "-3" under the plane slider."""
    current = tuple(str(a) for a in viewer.dims.axis_labels)
    n = len(labels)
    if len(current) < n or current[-n:] == tuple(labels):
        return
    if all(a.lstrip("-").isdigit() for a in current[-n:]):
        viewer.dims.axis_labels = (*current[:-n], *labels)


def set_up(viewer: Any, layer: Any) -> None:
    """Everything above that applies to one of our layers, by its role."""
    from ._layers import layer_role

    role, data = layer_role(getattr(layer, "metadata", {}))
    if data is None:
        return
    name_axes(viewer, data.axis_labels)
    if data.results is None or not data.results.salience:
        return
    if role == "salience":
        show_colourbar(layer)
    elif role == "ranks":
        follow_zoom(layer)
    elif role == "labels":
        hide_in_3d(viewer, layer)


def show_on_insert(layers: Sequence[tuple[Any, dict[str, Any], str]]) -> None:
    """Set up these layer data tuples' layers (see :func:`set_up`) once napari's current
    viewer adds them (a reader's layers are added right after it returns).

    Does nothing when napari is not imported or has no viewer.
    """
    napari = sys.modules.get("napari")
    if napari is None:
        return
    try:
        viewer = napari.current_viewer()
    except Exception:  # napari without a Qt viewer: nothing to set up
        return
    if viewer is None:
        return
    from ._layers import layer_role

    wanted = set()
    for _, kwargs, _ in layers:
        role, data = layer_role(kwargs.get("metadata", {}))
        if data is not None:
            wanted.add((id(data), role))
    if not wanted:
        return

    def on_inserted(event: Any) -> None:
        layer = event.value
        role, data = layer_role(getattr(layer, "metadata", {}))
        key = (id(data), role)
        if data is None or key not in wanted:
            return
        wanted.discard(key)
        set_up(viewer, layer)
        if not wanted:
            viewer.layers.events.inserted.disconnect(on_inserted)

    viewer.layers.events.inserted.connect(on_inserted)

"""Editing: aligned faces (``editor``: ``Editor``, ``load``), whole photos and grids (``photo``),
a photo prepared once for many fast edits (``session``: ``PreparedPhoto``), face detection,
alignment and paste-back (``faces``)."""
from .editor import PASTE_MODES, Editor, load
from .photo import SAMPLE_PHOTOS, NoFaceFound, edit_photo, interpolation_grid, save_image
from .session import PreparedPhoto

__all__ = ["Editor", "NoFaceFound", "PASTE_MODES", "PreparedPhoto", "SAMPLE_PHOTOS",
           "edit_photo", "interpolation_grid", "load", "save_image"]

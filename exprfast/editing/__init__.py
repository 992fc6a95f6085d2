"""Editing: aligned faces (``editor``: ``Editor``, ``load``), whole photos and grids (``photo``),
face detection, alignment and paste-back (``faces``)."""
from .editor import Editor, load
from .photo import SAMPLE_PHOTOS, NoFaceFound, edit_photo, interpolation_grid, save_image

__all__ = ["Editor", "NoFaceFound", "SAMPLE_PHOTOS", "edit_photo", "interpolation_grid", "load",
           "save_image"]

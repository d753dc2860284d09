"""The gallery: `page` renders DIR/index.html; gallery.css and gallery.js are the
page's style and script, shipped as package data."""

from batch_runner.outputs.gallery.page import (
    DEFAULT_MAX_FAILED,
    DEFAULT_MAX_IMAGES,
    write_gallery,
)

__all__ = ["DEFAULT_MAX_FAILED", "DEFAULT_MAX_IMAGES", "write_gallery"]

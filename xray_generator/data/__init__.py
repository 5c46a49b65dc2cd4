"""Data layer: the manifest, importers of public layouts, preprocessing and torch datasets."""
from xray_generator.data.manifest import MANIFEST_COLUMNS, Manifest, load_manifest

__all__ = ["MANIFEST_COLUMNS", "Manifest", "load_manifest"]

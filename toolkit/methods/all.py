"""Imports every built-in method module so that each registers itself."""

from adtk.toolkit.methods import patchcore  # noqa: F401

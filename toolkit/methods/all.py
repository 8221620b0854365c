"""Imports every built-in method module so that each registers itself."""

from adtk.toolkit.methods import patchcore  # noqa: F401
from adtk.toolkit.methods import knn, mahalanobis, padim, paire  # noqa: F401
from adtk.toolkit.methods import ldknn, reb  # noqa: F401
from adtk.toolkit.methods import labeled_patchcore, semlp, softcore  # noqa: F401

"""Device target files (package data of adtk.targets); loaded by adtk.export.targets."""

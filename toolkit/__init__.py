"""adtk.toolkit: the offline stage (data, backbones, methods, refinement, training, evaluation, CLI).

Importing this package is cheap; heavy dependencies (torch, timm, faiss) are imported by the modules
that need them.
"""

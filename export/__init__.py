"""adtk.export: the compiler. Composes preprocessing, a backbone, a method's head and
post-processing into one scoring graph, and writes it as one verified ONNX artefact.

It knows no method by name: a method supplies its head as a torch module whose buffers are its state.
"""

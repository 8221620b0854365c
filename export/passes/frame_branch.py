"""Keep one branch of the frame-size choice: the graph's top-level If nodes become their else branch.

The exported graph picks how it resizes a frame by the frame's height (toolkit/preprocess.py,
FramePreprocess: an ONNX If, then = the whole-frame resize for small frames, else = the gathered-row resize,
exact at every size). Some consumers take no If, or cannot have its bodies rewritten: the opset
down-conversion (passes/opset.py) does not rewrite nodes inside subgraphs, and a TensorRT engine is better
off without a data-dependent branch. For them this pass inlines the else branch in place of each If: the
results are the same at every frame size (the else branch is the general one), only the small-frame speed-up
is gone.

Values the branch defines are renamed with a prefix (a body may reuse names of the enclosing graph); names
it reads from the enclosing scope are left as they are; the branch's outputs are wired to the If's outputs
with Identity nodes.
"""

from __future__ import annotations


def inline_else_branches(model):
    """-> (new ModelProto, number of If nodes replaced); the model itself is not changed."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes, replaced = [], 0
    for node in graph.node:
        if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        body = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "else_branch")
        prefix = f"{node.name or 'if'}__else__"
        local = {t.name for t in body.initializer} | {o for n in body.node for o in n.output if o}

        def renamed(name: str) -> str:
            return prefix + name if name in local else name

        for tensor in body.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = renamed(tensor.name)
            graph.initializer.append(copy)
        for inner in body.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            copy.name = prefix + inner.name
            copy.input[:] = [renamed(i) if i else i for i in inner.input]
            copy.output[:] = [renamed(o) if o else o for o in inner.output]
            nodes.append(copy)
        for branch_output, if_output in zip(body.output, node.output):
            nodes.append(helper.make_node("Identity", [renamed(branch_output.name)], [if_output],
                                          name=f"{prefix}output_{if_output}"))
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return out, replaced

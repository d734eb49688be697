"""Plain facts read from an ONNX file's header (input shapes, ``metadata_props``), weights not read.

Their own module because both the shape tables (:mod:`engines.shapes`) and the TensorRT backend
(:mod:`engines.runtimes.tensorrt`, which builds on those tables) read them: kept in the backend,
the two modules imported each other.
"""

from __future__ import annotations

from pathlib import Path


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, tuple[int | None, ...]]:
    """Input names and shapes of an ONNX file (``None`` for a dynamic axis); weights not read."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:  # old exporters list weights as inputs too
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return shapes


def onnx_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, weights not read."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


__all__ = ["onnx_input_shapes", "onnx_metadata"]

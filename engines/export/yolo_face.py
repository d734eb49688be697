"""YOLO11n-face: ultralytics weights (``yolov11n-face.pt``) to ONNX through ultralytics' own
exporter (``YOLO(pt).export(format="onnx")``), then the ``cer.*`` metadata.

The export has a dynamic batch axis and a fixed square input (640 by default, the seeds'
``imgsz``): ultralytics' ``dynamic=True`` also frees height and width, which are pinned back to
the export size here so the only free axis is the batch (what a TensorRT profile needs).
Output ``output0`` [N, 4 + classes, anchors]: per anchor (cx, cy, w, h) in input pixels and
the class scores; no NMS in the graph (the seeds keep conf >= 0.01 and NMS at IoU 0.5).
Ultralytics' own metadata (``names``, ``stride``, ``imgsz``...) is kept beside ``cer.*``.

ultralytics is imported here only; the environment is set so that it neither downloads nor
installs anything while exporting (``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL``).
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from pathlib import Path

from engines.export.common import OPSET, ExportError, finish, source_info
from engines.models.registry import ModelSpec

EXPORT_VERSION = 1
DEFAULT_IMGSZ = 640


def _ultralytics():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ExportError(
            f"ultralytics is not importable ({exc}); install the export extra: pip install 'cer-stream[export]'"
        ) from None
    return YOLO


def pin_spatial_axes(model, size: int) -> None:
    """Fix axes 2 and 3 of the image input to ``size`` (leave the batch axis free)."""
    image = model.graph.input[0]
    dims = image.type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].ClearField("dim_param")
        dims[axis].dim_value = size


def export(source: Path, target: Path, spec: ModelSpec, *, imgsz: int = DEFAULT_IMGSZ) -> None:
    import onnx

    YOLO = _ultralytics()
    if source.is_dir() or source.suffix != ".pt":
        raise ExportError(f"{spec.name}: expected ultralytics weights (.pt), got {source}")
    with tempfile.TemporaryDirectory(prefix="cer-yolo-") as tmp:
        # ultralytics writes the .onnx beside the weights: work on a copy in a private folder.
        weights = Path(tmp) / source.name
        shutil.copyfile(source, weights)
        detector = YOLO(str(weights), task="detect")
        names = [detector.names[i] for i in sorted(detector.names)]
        if spec.labels is not None and names != list(spec.labels):
            raise ExportError(f"{source.name} detects {names}, the registry expects {list(spec.labels)}")
        written = detector.export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=OPSET, half=False, nms=False, device="cpu"
        )
        model = onnx.load(str(written))
    pin_spatial_axes(model, imgsz)
    theirs = {p.key: p.value for p in model.metadata_props}
    stride = theirs.get("stride")
    extra = {
        "input_shape": ["N", 3, imgsz, imgsz],
        "imgsz": imgsz,
        "stride": int(stride) if stride and stride.isdigit() else stride,
        "ultralytics_names": ast.literal_eval(theirs["names"]) if "names" in theirs else None,
    }
    finish(model, spec, target, source=source_info(source, format="ultralytics"), extra=extra)

"""EmoAffectNet (ResNet-50, AffectNet, 7 classes) from its TorchScript release to ONNX.

The authors publish the static model as a TorchScript file,
``FER_static_ResNet50_AffectNet.pt`` (Hugging Face ``ElenaRyumina/face_emotion_recognition``);
their pipelines load it with ``torch.jit.load`` and feed it a face crop resized to 224x224
with nearest-neighbour interpolation, channels flipped RGB -> BGR and the VGGFace2 channel
means (B, G, R) = (91.4953, 103.8827, 131.0912) subtracted, no scaling. Its output is 7 logits
in the order Neutral, Happiness, Sadness, Surprise, Fear, Disgust, Anger.

The exported graph folds the channel flip and the mean subtraction in, and adds a softmax:

    input  float32 [N, 3, 224, 224]  RGB, 0..255 (resized with nearest, otherwise raw)
    probs  float32 [N, 7]            softmax of the logits, labels as above
    logits float32 [N, 7]

so the run-time preprocessing is only "resize to 224 (nearest), HWC -> CHW, float32"
(:func:`preprocess`), which needs neither torch nor the exporter.

The TorchScript module is exported as is (the TorchScript-based ONNX exporter accepts
ScriptModules); the pre- and post-processing nodes are joined to it at the ONNX level.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.export.common import ExportError, finish, source_info, torch_to_onnx
from engines.models.registry import EMOAFFECTNET_MEAN_BGR, ModelSpec

EXPORT_VERSION = 1
INPUT_SIZE = 224
INPUT_NAME = "input"
_INNER_INPUT = "bgr_centred"


def load_torchscript(source: Path):
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch 2.10+ marks the TorchScript API deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(source), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError / ValueError for non-TorchScript files
        raise ExportError(
            f"{source.name} is not a TorchScript file ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the exporter expects the TorchScript release FER_static_ResNet50_AffectNet.pt"
        ) from None
    return module.eval()


def add_pre_and_post(model, mean_bgr: Sequence[float] = EMOAFFECTNET_MEAN_BGR) -> None:
    """Rewrite ``model`` (input ``bgr_centred``, output ``logits``) in place so that it takes
    RGB 0..255 as ``input`` and also returns ``probs``."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    old_input = next(v for v in graph.input if v.name == _INNER_INPUT)
    dims = [d.dim_param or d.dim_value for d in old_input.type.tensor_type.shape.dim]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2, 1, 0], np.int64), "pre/rgb_to_bgr_index"),
            numpy_helper.from_array(np.asarray(mean_bgr, np.float32).reshape(1, 3, 1, 1), "pre/mean_bgr"),
        ]
    )
    pre = [
        helper.make_node("Gather", [INPUT_NAME, "pre/rgb_to_bgr_index"], ["pre/bgr"], name="pre/rgb_to_bgr", axis=1),
        helper.make_node("Sub", ["pre/bgr", "pre/mean_bgr"], [_INNER_INPUT], name="pre/subtract_mean"),
    ]
    post = helper.make_node("Softmax", ["logits"], ["probs"], name="post/softmax", axis=1)
    nodes = pre + list(graph.node) + [post]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(old_input)
    graph.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims))
    logits = next(v for v in graph.output if v.name == "logits")
    probs = helper.make_tensor_value_info(
        "probs", TensorProto.FLOAT, [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    )
    graph.output.insert(0, probs)


def export(source: Path, target: Path, spec: ModelSpec) -> None:
    """Write the ONNX model of the TorchScript file ``source`` to ``target``."""
    import torch

    module = load_torchscript(source)
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    model = torch_to_onnx(
        module,
        (example,),
        input_names=[_INNER_INPUT],
        output_names=["logits"],
        dynamic_axes={_INNER_INPUT: {0: "N"}, "logits": {0: "N"}},
    )
    if len(model.graph.output) != 1:
        raise ExportError(
            f"{source.name}: expected one output (7 logits), the module returns {len(model.graph.output)}"
        )
    add_pre_and_post(model)
    finish(model, spec, target, source=source_info(source, format="torchscript"), check_labels="probs")


def preprocess(faces: Sequence[np.ndarray]) -> np.ndarray:
    """RGB uint8 face crops (HxWx3) -> float32 [N, 3, 224, 224] for the exported model.

    Only the resize (nearest, pixel for pixel as PIL's ``Image.NEAREST`` in the authors' code) and the layout change happen
    here; the BGR flip and mean subtraction are inside the ONNX graph.
    """
    import cv2

    batch = np.empty((len(faces), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, face in enumerate(faces):
        face = np.asarray(face)
        if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 HxWx3 crops, got {face.dtype} {face.shape}")
        # INTER_NEAREST_EXACT picks the same pixels as PIL's NEAREST (the authors' resize);
        # plain INTER_NEAREST rounds differently and does not.
        resized = cv2.resize(face, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST_EXACT)
        batch[i] = resized.transpose(2, 0, 1)
    return batch

"""The first blocks of Whisper base's encoder as an ONNX model, read from the CTranslate2 ``model.bin``.

CTranslate2's ``WhisperModel.encode`` returns only the encoder's last layer (after its final
LayerNorm), and for speech emotion the middle layers carry more: the shipped voice head
(:mod:`stream.modalities.speech.voice`) pools the outputs of encoder blocks 2 and 3, and the
last layer generalises worst across corpora and languages (the measurements are in
``stream/heads/README.md``). So this module reads the very ``model.bin`` the recogniser uses
(:func:`engines.models.whisper_base.model_dir`) and writes the encoder's front end and its first
blocks with ``onnx.helper`` (no torch), following OpenAI Whisper's ``AudioEncoder``
(Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision"):

* input ``mel`` float32 [N, 80, T], the log-mel spectrogram (faster-whisper's
  ``FeatureExtractor``), T <= 3000 and dynamic (the clip alone, NOT padded to 30 s), and input
  ``frames`` int32 [N], each item's own number of mel frames (<= T): a batch of stretches of
  different lengths is padded to the longest, and the graph makes every item's valid frames
  what they would be alone (see *Batches* below);
* conv1 (k 3, pad 1) + GELU, conv2 (k 3, stride 2, pad 1) + GELU, then the sinusoidal position
  table CTranslate2 stores (``encoder/position_encodings/encodings``) sliced to T/2 frames;
* pre-LN blocks: LayerNorm, self-attention (CTranslate2's fused QKV projection, 8 heads, the
  1/sqrt(head size) scale folded into the query rows), residual; LayerNorm, MLP with the exact
  erf GELU, residual; LayerNorm epsilon 1e-5;
* outputs ``block{k}`` float32 [N, T/2, 512] for each requested block k (1-based: the output of
  CTranslate2's ``encoder/layer_{k-1}``); with ``final_ln`` the last block's output gets the
  encoder's final LayerNorm, which makes ``blocks=6, final_ln=True`` the whole encoder (what
  ``WhisperModel.encode`` returns; the test compares the two).

**Batches.** Whisper's encoder has no padding mask of its own (OpenAI's always runs 30 s), so
three things would leak a shorter item's padding into its valid frames: the mel frames past
its end (zeroed here, as conv1's own zero padding is), conv1's output past its end (GELU(bias)
is not zero, and conv2's last frame reads one frame past an odd length: zeroed, as conv2's
own padding is), and self-attention (padded keys get -1e9 before the softmax, an exact zero
weight). An item of the longest length gets masks of ones and a bias of 0, i.e. exactly the
unbatched graph; ``frames`` past an item's end are garbage and :class:`WhisperEncoder` cuts
them off (encoder frames ``ceil(frames / 2)``).

The CTranslate2 binary format (version 6) is a small header (version, spec name, revision), then
per variable: name, rank, dims, dtype code, byte count and the raw little-endian data, then a
table of aliases; :func:`read_ct2` parses it with numpy. The ONNX file is cached in the model
cache under the ``model.bin`` sha256 and the exporter version (like the other exporters) and
runs through the engines layer (ONNX Runtime; TensorRT where the shape table has an entry).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.models.storage import atomic_write, default_cache_dir, sha256_file

if TYPE_CHECKING:
    from engines.base import Engine

log = logging.getLogger("cer_stream.engines")

NAME = "whisper-base-encoder"
ROLE = "speech_encoder"
LICENSE = "MIT (OpenAI Whisper weights; Systran CTranslate2 conversion)"
INPUT_NAME = "mel"
FRAMES_NAME = "frames"
#: The additive attention bias of a padded key frame (exp underflows to exactly 0).
MASKED_SCORE = -1e9
N_MELS = 80
LN_EPS = 1e-5
OPSET = 17
IR_VERSION = 8
#: Bumped whenever the exporter's output changes, so stale cache files are not reused.
EXPORT_VERSION = 2  # 2: the ``frames`` input (batches of different lengths)
#: The voice head's blocks (outputs block2 and block3).
VOICE_BLOCKS = 3
VOICE_OUTPUTS = (2, 3)

# CTranslate2 dtype codes (ctranslate2/types.h): float32, int8, int16, int32, float16, bfloat16
_CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and the variables of a CTranslate2 ``model.bin`` (binary version 6)."""
    buf = Path(path).read_bytes()
    pos = 0

    def unpack(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def string() -> str:
        nonlocal pos
        size = unpack("<H")
        text = buf[pos : pos + size].decode("utf-8").rstrip("\x00")
        pos += size
        return text

    version = unpack("<I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
    spec = string()
    unpack("<I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(unpack("<I")):
        name = string()
        dims = [unpack("<I") for _ in range(unpack("<B"))]
        code = unpack("<B")
        size = unpack("<I")
        if code not in _CT2_DTYPES:
            pos += size  # bfloat16 etc.: not used by the encoder
            continue
        dtype = np.dtype(_CT2_DTYPES[code]).newbyteorder("<")
        variables[name] = np.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize, offset=pos).reshape(dims)
        pos += size
    return spec, variables


def model_sha256(folder: str | Path) -> str:
    """sha256 of ``folder/model.bin``: the stamp :mod:`engines.models.whisper_base` wrote after
    checking the joined file (when the size still matches), else hashed here."""
    from engines.models import whisper_base

    folder = Path(folder)
    stamp = folder / whisper_base.STAMP
    model = folder / "model.bin"
    if stamp.is_file() and model.is_file():
        value = stamp.read_text().strip()
        if value == whisper_base.MODEL_SHA256 and model.stat().st_size == whisper_base.MODEL_SIZE:
            return value
    return sha256_file(model)


def build_onnx(
    model_bin: str | Path, *, blocks: int = VOICE_BLOCKS, outputs: Sequence[int] | None = None, final_ln: bool = False
):
    """The ONNX model (``onnx.ModelProto``) of the front end and encoder blocks 1..``blocks``,
    with one output per block in ``outputs`` (default: the last block)."""
    import onnx
    from onnx import TensorProto, helper

    from engines.models.minilm import _GraphBuilder

    spec, v = read_ct2(model_bin)
    if spec != "WhisperSpec":
        raise ValueError(f"{model_bin}: a {spec!r} model, not a Whisper one")
    outputs = tuple(outputs) if outputs is not None else (blocks,)
    layers = sum(1 for name in v if name.startswith("encoder/layer_") and name.endswith("/ffn/linear_0/weight"))
    if not 1 <= blocks <= layers or any(not 1 <= k <= blocks for k in outputs):
        raise ValueError(f"blocks must be 1..{layers} and outputs within 1..blocks, got {blocks}, {outputs}")

    def f32(name: str) -> np.ndarray:
        return np.asarray(v[name], dtype=np.float32)

    heads = int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0]) if "encoder/num_heads" in v else 8
    width = f32("encoder/conv1/weight").shape[0]
    head_dim = width // heads
    g = _GraphBuilder()
    inv_sqrt2 = g.const("const.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    one = g.const("const.one", np.array(1.0, np.float32))
    half = g.const("const.half", np.array(0.5, np.float32))

    def gelu(x: str, prefix: str) -> str:
        erf = g.op("Erf", [g.op("Mul", [x, inv_sqrt2], f"{prefix}/gelu_scale")], f"{prefix}/gelu_erf")
        gate = g.op("Mul", [g.op("Add", [erf, one], f"{prefix}/gelu_add"), half], f"{prefix}/gelu_half")
        return g.op("Mul", [x, gate], f"{prefix}/gelu")

    def conv(x: str, prefix: str, stride: int) -> str:
        w = g.const(f"{prefix}.weight", f32(f"encoder/{prefix}/weight"))
        b = g.const(f"{prefix}.bias", f32(f"encoder/{prefix}/bias"))
        return gelu(g.op("Conv", [x, w, b], f"{prefix}/conv", pads=[1, 1], strides=[stride], kernel_shape=[3]), prefix)

    # the valid mel frames of each item: mask [N, T] = (0..T-1 < frames), float
    steps = g.op(
        "Range",
        [
            g.const("const.zero", np.array(0, np.int64)),
            g.op("Squeeze", [g.op("Shape", [INPUT_NAME], "mask/t", start=2, end=3)], "mask/t_scalar"),
            g.const("const.one_i", np.array(1, np.int64)),
        ],
        "mask/steps",
    )
    valid = g.op(
        "Less",
        [
            g.op("Cast", [steps], "mask/steps_f", to=TensorProto.FLOAT),  # [T], broadcast against [N, 1]
            g.op(
                "Unsqueeze",
                [
                    g.op("Cast", [FRAMES_NAME], "mask/frames_f", to=TensorProto.FLOAT),
                    g.const("const.axis1", np.array([1], np.int64)),
                ],
                "mask/frames_col",
            ),
        ],
        "mask/valid",
    )
    mask = g.op("Cast", [valid], "mask/mel", to=TensorProto.FLOAT)  # [N, T]
    mask_ch = g.op("Unsqueeze", [mask, g.const("const.axis1b", np.array([1], np.int64))], "mask/mel_ch")  # [N, 1, T]
    mel = g.op("Mul", [INPUT_NAME, mask_ch], "mask/mel_in")
    x = g.op("Mul", [conv(mel, "conv1", 1), mask_ch], "conv1/masked")
    x = conv(x, "conv2", 2)
    # encoder frame j holds mel frames 2j, 2j+1: valid when mel frame 2j is
    enc_mask = g.op(
        "Slice",
        [
            mask,
            g.const("const.zero1b", np.array([0], np.int64)),
            g.const("const.big", np.array([np.iinfo(np.int64).max], np.int64)),
            g.const("const.axis1c", np.array([1], np.int64)),
            g.const("const.two", np.array([2], np.int64)),
        ],
        "mask/encoder",
    )  # [N, ceil(T/2)]
    key_bias = g.op(
        "Mul",
        [
            g.op("Sub", [enc_mask, g.const("const.one_f", np.array(1.0, np.float32))], "mask/encoder_off"),
            g.const("const.masked", np.array(-MASKED_SCORE, np.float32)),
        ],
        "mask/key_bias_flat",
    )
    key_bias = g.op("Unsqueeze", [key_bias, g.const("const.axes12", np.array([1, 2], np.int64))], "mask/key_bias")
    x = g.op("Transpose", [x], "frontend/time_major", perm=[0, 2, 1])  # [N, T/2, width]
    frames = g.op("Shape", [x], "frontend/frames", start=1, end=2)
    pos = g.op(
        "Slice",
        [
            g.const("encoder.positions", f32("encoder/position_encodings/encodings")),
            g.const("const.zero1", np.array([0], np.int64)),
            frames,
            g.const("const.axis0", np.array([0], np.int64)),
        ],
        "frontend/positions",
    )
    x = g.op("Add", [x, pos], "frontend/with_positions")

    split_heads = g.const("const.split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("const.merge_heads", np.array([0, 0, width], np.int64))
    split_qkv = g.const("const.split_qkv", np.array([width, width, width], np.int64))
    scale = 1.0 / math.sqrt(head_dim)
    names: list[str] = []
    for k in range(1, blocks + 1):
        p = f"encoder/layer_{k - 1}/"
        pre = f"block{k}"
        y = g.layer_norm(
            x,
            f32(p + "self_attention/layer_norm/gamma"),
            f32(p + "self_attention/layer_norm/beta"),
            LN_EPS,
            f"{pre}.ln1",
        )
        w_qkv = f32(p + "self_attention/linear_0/weight").copy()  # [3 * width, width], rows q|k|v
        b_qkv = f32(p + "self_attention/linear_0/bias").copy()
        w_qkv[:width] *= scale
        b_qkv[:width] *= scale
        qkv = g.linear(y, w_qkv, b_qkv, f"{pre}.qkv")
        q, key, val = (f"{pre}/q", f"{pre}/k", f"{pre}/v")
        g.nodes.append(helper.make_node("Split", [qkv, split_qkv], [q, key, val], name=f"{pre}/split", axis=-1))
        q = g.op("Transpose", [g.op("Reshape", [q, split_heads], f"{pre}/q_heads")], f"{pre}/q_t", perm=[0, 2, 1, 3])
        key = g.op(
            "Transpose", [g.op("Reshape", [key, split_heads], f"{pre}/k_heads")], f"{pre}/k_t", perm=[0, 2, 3, 1]
        )
        val = g.op(
            "Transpose", [g.op("Reshape", [val, split_heads], f"{pre}/v_heads")], f"{pre}/v_t", perm=[0, 2, 1, 3]
        )
        scores = g.op("Add", [g.op("MatMul", [q, key], f"{pre}/scores_raw"), key_bias], f"{pre}/scores")
        probs = g.op("Softmax", [scores], f"{pre}/probs", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, val], f"{pre}/context")], f"{pre}/context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads], f"{pre}/context_merged")
        attn = g.linear(
            ctx, f32(p + "self_attention/linear_1/weight"), f32(p + "self_attention/linear_1/bias"), f"{pre}.out"
        )
        x = g.op("Add", [x, attn], f"{pre}/attn_residual")
        y = g.layer_norm(x, f32(p + "ffn/layer_norm/gamma"), f32(p + "ffn/layer_norm/beta"), LN_EPS, f"{pre}.ln2")
        y = gelu(g.linear(y, f32(p + "ffn/linear_0/weight"), f32(p + "ffn/linear_0/bias"), f"{pre}.fc1"), pre)
        y = g.linear(y, f32(p + "ffn/linear_1/weight"), f32(p + "ffn/linear_1/bias"), f"{pre}.fc2")
        last = k == blocks
        x = g.op("Add", [x, y], f"{pre}/ffn_residual" if (k not in outputs or (last and final_ln)) else pre)
        if last and final_ln:
            x = g.op(
                "LayerNormalization",
                [
                    x,
                    g.const("encoder.ln.weight", f32("encoder/layer_norm/gamma")),
                    g.const("encoder.ln.bias", f32("encoder/layer_norm/beta")),
                ],
                pre,
                axis=-1,
                epsilon=LN_EPS,
            )
        if k in outputs:
            names.append(pre)

    graph = helper.make_graph(
        g.nodes,
        NAME,
        [
            helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", N_MELS, "T"]),
            helper.make_tensor_value_info(FRAMES_NAME, TensorProto.INT32, ["N"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "F", width]) for n in names],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cer-stream",
        producer_version=f"whisper-encoder-e{EXPORT_VERSION}",
        doc_string=f"Whisper encoder front end + blocks 1..{blocks} from a CTranslate2 model.bin, ported by cer-stream",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "cer.name": NAME,
            "cer.role": ROLE,
            "cer.license": LICENSE,
            "cer.source": json.dumps(
                {"file": "whisper-base/model.bin", "sha256": sha256_file(model_bin)}, sort_keys=True
            ),
            "cer.blocks": str(blocks),
            "cer.outputs": json.dumps(names),
            "cer.final_ln": str(final_ln).lower(),
            "cer.max_frames": str(2 * int(v["encoder/position_encodings/encodings"].shape[0])),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def ensure_onnx(
    folder: str | Path | None = None,
    *,
    blocks: int = VOICE_BLOCKS,
    outputs: Sequence[int] = VOICE_OUTPUTS,
    final_ln: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """The cached ONNX file of the encoder blocks (exported on first use) for the CTranslate2
    Whisper folder ``folder`` (default: the joined Whisper base, which may raise
    :class:`engines.models.whisper_base.WhisperBaseMissing`). Named after the ``model.bin``
    sha256, the block layout and the exporter version; written atomically."""
    if folder is None:
        from engines.models.whisper_base import model_dir

        folder = model_dir()
    folder = Path(folder)
    digest = model_sha256(folder)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    layout = f"b{blocks}-o{''.join(str(k) for k in outputs)}{'-ln' if final_ln else ''}"
    target = cache / f"{NAME}-{digest[:16]}-{layout}-e{EXPORT_VERSION}.onnx"
    if target.is_file():
        return target
    model = build_onnx(folder / "model.bin", blocks=blocks, outputs=outputs, final_ln=final_ln)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(target, model.SerializeToString())
    log.info("exported %s (%s) to %s", NAME, layout, target)
    return target


class WhisperEncoder:
    """Encoder blocks of a CTranslate2 Whisper model through the engines layer:
    ``encoder(mel [80, T]) -> list of [ceil(T/2), 512]`` float32, one per requested output
    block; ``encoder.batch([mel, ...])`` runs several stretches of different lengths at once
    (one engine run, the same outputs per item as alone).

    Args:
        folder: the CTranslate2 Whisper folder (default: the joined Whisper base).
        blocks/outputs/final_ln: see :func:`build_onnx`.
        backend/device: see :mod:`engines.select` (``device="cpu"`` by default: 4 s of speech
            take about 0.1 s on one core).
        intra_op_threads: ONNX Runtime threads (default 1: the speech stages share the cores).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        blocks: int = VOICE_BLOCKS,
        outputs: Sequence[int] = VOICE_OUTPUTS,
        final_ln: bool = False,
        backend: str = "auto",
        device: str = "cpu",
        intra_op_threads: int | None = 1,
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.blocks = blocks
        self.outputs = tuple(outputs)
        self.final_ln = final_ln
        self.backend = backend
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.engine: Engine | None = None
        self.model_sha256: str | None = None
        self.max_frames = 3000

    def load(self) -> WhisperEncoder:
        if self.engine is not None:
            return self
        if self.folder is None:
            from engines.models.whisper_base import model_dir

            self.folder = model_dir()
        path = ensure_onnx(self.folder, blocks=self.blocks, outputs=self.outputs, final_ln=self.final_ln)
        self.model_sha256 = model_sha256(self.folder)
        from engines.select import create_engine

        self.engine = create_engine(
            path,
            backend=self.backend,
            device=self.device,
            model=NAME,
            expect_metadata={"cer.name": NAME},
            intra_op_threads=self.intra_op_threads,
        )
        self.max_frames = int(self.engine.metadata.get("cer.max_frames", 3000))
        return self

    def __call__(self, mel: np.ndarray) -> list[np.ndarray]:
        """The output blocks of one log-mel ``mel`` [80, T] (T capped at ``max_frames``)."""
        if np.ndim(mel) != 2 or np.shape(mel)[0] != N_MELS:
            raise ValueError(f"mel must be [{N_MELS}, T], got {np.shape(mel)}")
        return self.batch([mel])[0]

    def batch(self, mels: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """One engine run for several log-mels of different lengths (each [80, T_i]): per item,
        the output blocks [ceil(T_i / 2), 512] it would get alone (the graph masks the padding
        to the longest, see the module's *Batches*)."""
        if self.engine is None:
            self.load()
        assert self.engine is not None
        items = []
        for mel in mels:
            mel = np.asarray(mel, dtype=np.float32)
            if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] < 1:
                raise ValueError(f"mel must be [{N_MELS}, T] with T >= 1, got {mel.shape}")
            items.append(mel[:, : self.max_frames])
        if not items:
            return []
        frames = np.array([m.shape[1] for m in items], np.int32)
        padded = np.zeros((len(items), N_MELS, int(frames.max())), np.float32)
        for i, m in enumerate(items):
            padded[i, :, : m.shape[1]] = m
        outs = self.engine.infer({INPUT_NAME: padded, FRAMES_NAME: frames})
        return [[np.asarray(o[i, : (int(n) + 1) // 2], np.float32) for o in outs] for i, n in enumerate(frames)]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None

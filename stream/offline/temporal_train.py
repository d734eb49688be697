"""``cer-stream train-temporal``: train the dynamic face model and export it to ONNX.

Two encoders over a window's per-frame features ``[L = 20, D]`` (hidden 512, 4 layers,
dropout 0.15: the seeds' model in SMIL-SPCRAS/ICCVW_25, the code of the 9th ABAW CER paper of
team RAS, 2025), each followed by mean pooling over time, LayerNorm and a linear layer
to the 8 basic states:

* ``transformer``: a linear projection, learned position embeddings and a pre-norm
  ``nn.TransformerEncoder`` (GELU, feed-forward 4 x hidden);
* ``mamba``: residual pre-norm blocks of a selective state-space layer in the style of Mamba
  (Gu & Dao 2023), written in plain PyTorch: input projection to a gated inner stream, a
  causal depthwise convolution, then an SSM whose step size Δ and matrices B and C depend on
  the input (the "selection"), discretised with zero-order hold for A (``exp(Δ A)``) and Euler
  for B (``Δ B``), and run as a sequential scan over the 20 steps.  The loop unrolls when the
  model is traced, so the ONNX export is plain tensor arithmetic (no custom kernel); for 20
  steps this costs nothing worth a parallel scan.

Per-feature standardisation (mean and standard deviation of the training set) is a buffer of
the model, so the ONNX file takes raw features.  The export has input ``features`` ``[batch,
L, D]`` and outputs ``probs`` (softmax, BASIC order) and ``embedding`` (the pooled vector),
and carries its metadata (``stream/modalities/temporal.py`` reads it); it is checked against the PyTorch
model on validation windows before the command succeeds.

Training: AdamW, class-balanced cross-entropy, a seeded split that holds out whole videos
where the data names them, early stopping on validation macro-F1 (ties: lower loss), the
best epoch's weights kept.  torch is imported only by this module.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.labels import BASIC
from stream.core.metrics import macro_f1
from stream.modalities.temporal import FORMAT, FORMAT_VERSION, TemporalModel
from stream.offline.temporal_data import DataError, SequenceData, load_sequences

ARCHS: tuple[str, ...] = ("transformer", "mamba")
#: ONNX opset of the export (ONNX Runtime 1.17+ and TensorRT 8.6+ read it).
OPSET = 17
#: Largest difference allowed between the ONNX and the PyTorch probabilities.
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Model and training settings (defaults: the seeds' model, SMIL-SPCRAS/ICCVW_25)."""

    arch: str = "transformer"
    hidden: int = 512
    layers: int = 4
    dropout: float = 0.15
    heads: int = 8  # transformer attention heads
    d_state: int = 16  # mamba state size per channel
    expand: int = 2  # mamba inner width = expand x hidden
    d_conv: int = 4  # mamba causal convolution width
    epochs: int = 100
    patience: int = 15
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    balanced: bool = True
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.hidden < 1 or self.layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("hidden, layers, epochs and batch size must be positive")
        if self.arch == "transformer" and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0 <= self.dropout < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("dropout and val_fraction must be in [0, 1)")


# --------------------------------------------------------------------------- models
def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a training-time dependency
        raise RuntimeError(f"training needs PyTorch ({exc}); install torch") from exc
    return torch


def _modules():
    """Model classes, defined on first use so that importing this module needs no torch."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class SelectiveSSM(nn.Module):
        """A Mamba-style selective state-space layer, ``[B, L, d] -> [B, L, d]``."""

        def __init__(self, d_model: int, *, d_state: int = 16, expand: int = 2, d_conv: int = 4) -> None:
            super().__init__()
            d_inner = expand * d_model
            self.d_state = d_state
            self.dt_rank = max(1, math.ceil(d_model / 16))
            self.in_proj = nn.Linear(d_model, 2 * d_inner)
            self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
            self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, d_inner)
            # Δ starts log-uniform in [1e-3, 1e-1] (softplus inverse in the bias), as in Mamba
            dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            with torch.no_grad():
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, kept as log(-A)
            self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
            self.D = nn.Parameter(torch.ones(d_inner))
            self.out_proj = nn.Linear(d_inner, d_model)

        def forward(self, x):
            length = x.shape[1]
            u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, d_inner] each
            u = F.silu(self.conv(u.transpose(1, 2))[..., :length].transpose(1, 2))  # causal
            dt, b, c = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = F.softplus(self.dt_proj(dt))  # [B, L, d_inner], input-dependent step
            a = -torch.exp(self.A_log)  # [d_inner, N]
            da = torch.exp(dt.unsqueeze(-1) * a)  # [B, L, d_inner, N]
            dbu = (dt * u).unsqueeze(-1) * b.unsqueeze(2)  # [B, L, d_inner, N]
            h = dbu[:, 0]  # the state starts at zero, so h_0 = dbu_0
            ys = [(h * c[:, 0].unsqueeze(1)).sum(-1)]
            for t in range(1, length):
                h = da[:, t] * h + dbu[:, t]
                ys.append((h * c[:, t].unsqueeze(1)).sum(-1))
            y = torch.stack(ys, dim=1) + u * self.D  # [B, L, d_inner]
            return self.out_proj(y * F.silu(z))

    class MambaEncoder(nn.Module):
        def __init__(
            self, in_dim: int, hidden: int, layers: int, dropout: float, *, d_state: int, expand: int, d_conv: int
        ) -> None:
            super().__init__()
            self.proj = nn.Linear(in_dim, hidden)
            self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
            self.blocks = nn.ModuleList(
                SelectiveSSM(hidden, d_state=d_state, expand=expand, d_conv=d_conv) for _ in range(layers)
            )
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            h = self.proj(x)
            for norm, block in zip(self.norms, self.blocks):
                h = h + self.drop(block(norm(h)))
            return h

    class TransformerEncoder(nn.Module):
        def __init__(self, in_dim: int, hidden: int, layers: int, dropout: float, *, heads: int, seq_len: int) -> None:
            super().__init__()
            self.proj = nn.Linear(in_dim, hidden)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, hidden))
            nn.init.trunc_normal_(self.pos, std=0.02)
            self.drop = nn.Dropout(dropout)
            layer = nn.TransformerEncoderLayer(
                hidden, heads, 4 * hidden, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            # nn.TransformerEncoder deep-copies one layer, so every layer would start with the
            # same weights: give each its own initialisation
            for mod in self.encoder.layers.modules():
                if isinstance(mod, nn.Linear):
                    mod.reset_parameters()
            for mod in self.encoder.layers.modules():
                if isinstance(mod, nn.MultiheadAttention):
                    mod._reset_parameters()

        def forward(self, x):
            return self.encoder(self.drop(self.proj(x) + self.pos))

    class TemporalNet(nn.Module):
        """Standardise -> encoder -> mean over time -> LayerNorm (the embedding) -> linear."""

        def __init__(self, opts: TrainOptions, in_dim: int, seq_len: int, mean, std) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 1, in_dim))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 1, in_dim))
            if opts.arch == "transformer":
                self.encoder = TransformerEncoder(
                    in_dim, opts.hidden, opts.layers, opts.dropout, heads=opts.heads, seq_len=seq_len
                )
            else:
                self.encoder = MambaEncoder(
                    in_dim,
                    opts.hidden,
                    opts.layers,
                    opts.dropout,
                    d_state=opts.d_state,
                    expand=opts.expand,
                    d_conv=opts.d_conv,
                )
            self.norm = nn.LayerNorm(opts.hidden)
            self.drop = nn.Dropout(opts.dropout)
            self.head = nn.Linear(opts.hidden, len(BASIC))

        def forward(self, x):
            h = self.encoder((x - self.mean) / self.std)
            emb = self.norm(h.mean(dim=1))
            return self.head(self.drop(emb)), emb

    class Exported(nn.Module):
        """What goes into the ONNX file: probabilities and the embedding."""

        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, features):
            logits, emb = self.net(features)
            return torch.softmax(logits, dim=-1), emb

    return {"TemporalNet": TemporalNet, "Exported": Exported, "SelectiveSSM": SelectiveSSM}


def build_model(opts: TrainOptions, in_dim: int, seq_len: int, *, mean=None, std=None):
    """A fresh :class:`TemporalNet` (``forward(x [B, L, D]) -> (logits [B, 8], embedding [B, H])``)."""
    mean = np.zeros(in_dim, np.float32) if mean is None else mean
    std = np.ones(in_dim, np.float32) if std is None else std
    return _modules()["TemporalNet"](opts, in_dim, seq_len, mean, std)


# --------------------------------------------------------------------------- training
def split_indices(data: SequenceData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices: whole videos held out when the data names at least two,
    otherwise a per-class (stratified) draw of windows.  No validation set when
    ``val_fraction`` is 0 or the data is too small; the training set is then used to select."""
    n = len(data)
    rng = np.random.default_rng(seed)
    if val_fraction <= 0 or n < 4:
        return np.arange(n), np.arange(0)
    if data.videos is not None and len(set(data.videos.tolist())) >= 2:
        videos = np.array(sorted(set(data.videos.tolist())))
        rng.shuffle(videos)
        n_val = min(len(videos) - 1, max(1, round(val_fraction * len(videos))))
        held = set(videos[:n_val].tolist())
        is_val = np.array([v in held for v in data.videos.tolist()])
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    val: list[int] = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        rng.shuffle(idx)
        k = int(round(val_fraction * len(idx)))
        if len(idx) - k >= 1:
            val.extend(idx[:k].tolist())
    val_idx = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(np.arange(n), val_idx), val_idx


@dataclass
class TrainResult:
    model: Any  # the TemporalNet with the best epoch's weights, in eval mode
    options: TrainOptions
    epochs_run: int
    best_epoch: int
    val_macro_f1: float
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    n_train: int
    n_val: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_macro_f1": round(self.val_macro_f1, 4),
            "val_accuracy": round(self.val_accuracy, 4),
            "val_loss": round(self.val_loss, 4),
            "train_accuracy": round(self.train_accuracy, 4),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seconds": round(self.seconds, 1),
        }


def _evaluate(torch, model, x, y, weight) -> tuple[float, float, float, np.ndarray]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 256])[0] for i in range(0, len(x), 256)])
        loss = float(torch.nn.functional.cross_entropy(logits, y, weight=weight))
        pred = logits.argmax(-1).numpy()
    truth = y.numpy()
    return loss, float((pred == truth).mean()), macro_f1(truth, pred), pred


def train(data: SequenceData, opts: TrainOptions, *, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train on ``data`` (labelled windows) and return the best model (see the module docstring)."""
    torch = _torch()
    data = data.labelled()
    if len(data) < 2:
        raise DataError(f"need at least 2 labelled sequences, got {len(data)}")
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        return _train(torch, data, opts, say, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _train(torch, data: SequenceData, opts: TrainOptions, say: Callable[[str], None], t_start: float) -> TrainResult:
    torch.manual_seed(opts.seed)
    tr, va = split_indices(data, opts.val_fraction, opts.seed)
    if va.size == 0:
        say("no validation split (too little data or --val-fraction 0): selecting on the training set")
        va = tr
    x_all = torch.from_numpy(data.features)
    y_all = torch.from_numpy(data.labels)
    x_tr, y_tr, x_va, y_va = x_all[tr], y_all[tr], x_all[va], y_all[va]

    flat = data.features[tr].reshape(-1, data.dim)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), 1e-6)
    model = build_model(opts, data.dim, data.seq_len, mean=mean, std=std)

    counts = np.bincount(data.labels[tr], minlength=len(BASIC)).astype(np.float64)
    if opts.balanced:
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    else:
        w = (counts > 0).astype(np.float64)
    weight = torch.tensor(w, dtype=torch.float32)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(opts.seed)

    best = (-1.0, math.inf)
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    epoch = 0
    for epoch in range(1, opts.epochs + 1):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(order), opts.batch_size):
            batch = order[i : i + opts.batch_size]
            logits, _ = model(x_tr[batch])
            loss = torch.nn.functional.cross_entropy(logits, y_tr[batch], weight=weight)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            total += loss.detach().item() * len(batch)
        val_loss, val_acc, val_f1, _ = _evaluate(torch, model, x_va, y_va, weight)
        improved = (val_f1, -val_loss) > (best[0], -best[1])
        if improved:
            best, best_state, best_epoch, stale = (val_f1, val_loss), copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
        say(
            f"epoch {epoch:3d}/{opts.epochs}  train loss {total / len(x_tr):.4f}  val loss {val_loss:.4f}  "
            f"val acc {val_acc:.3f}  val macro-F1 {val_f1:.3f}{'  *' if improved else ''}"
        )
        if stale >= opts.patience:
            say(f"early stop: no better validation macro-F1 for {opts.patience} epochs")
            break
    model.load_state_dict(best_state)
    val_loss, val_acc, val_f1, _ = _evaluate(torch, model, x_va, y_va, weight)
    _, train_acc, _, _ = _evaluate(torch, model, x_tr, y_tr, weight)
    model.eval()
    return TrainResult(
        model,
        opts,
        epoch,
        best_epoch,
        val_f1,
        val_acc,
        val_loss,
        train_acc,
        len(tr),
        len(va) if va is not tr else 0,
        time.perf_counter() - t_start,
    )


# --------------------------------------------------------------------------- export
def export_onnx(model, path: str | Path, *, seq_len: int, dim: int, metadata: dict[str, str]) -> Path:
    """Write ``model`` (a TemporalNet) as ONNX with ``metadata``; atomically."""
    torch = _torch()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _modules()["Exported"](model).eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                wrapper,
                (torch.zeros(1, seq_len, dim),),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=["features"],
                output_names=["probs", "embedding"],
                dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}, "embedding": {0: "batch"}},
            )
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def model_metadata(result: TrainResult, data: SequenceData, *, source: str = "") -> dict[str, str]:
    opts = result.options
    return {
        "cer.format": FORMAT,
        "cer.version": str(FORMAT_VERSION),
        "cer.labels": json.dumps(list(BASIC)),
        "cer.input_shape": json.dumps(["batch", data.seq_len, data.dim]),
        "cer.feature_kind": data.feature_kind,
        "cer.feature_labels": json.dumps(list(data.feature_labels)),
        "cer.arch": opts.arch,
        "cer.options": json.dumps(asdict(opts), sort_keys=True),
        "cer.training": json.dumps(
            {**result.summary(), "data": source, "data_sha256": data.digest(), "windows": len(data)}, sort_keys=True
        ),
        "cer.outputs": "probs: softmax over cer.labels; embedding: time-pooled, layer-normed encoder output",
    }


def check_onnx(model, path: str | Path, features: np.ndarray) -> float:
    """Largest |ONNX - PyTorch| over ``features`` [N, L, D] (probabilities and embedding),
    run through the engines layer as at inference."""
    torch = _torch()
    tm = TemporalModel(path, device="cpu")
    try:
        model.eval()
        with torch.no_grad():
            logits, emb = model(torch.from_numpy(np.asarray(features, np.float32)))
            want_p, want_e = torch.softmax(logits, -1).numpy(), emb.numpy()
        got_p, got_e = tm.engine.infer(np.asarray(features, np.float32))[:2]
        return float(max(np.abs(got_p - want_p).max(), np.abs(got_e - want_e).max() / max(1.0, np.abs(want_e).max())))
    finally:
        tm.close()


# --------------------------------------------------------------------------- the command
@dataclass(frozen=True, kw_only=True)
class TrainTemporalOptions:
    """Options of ``cer-stream train-temporal``.

    Attributes:
        data: an ``.npz`` file of labelled sequences or a directory of them (required; see
            :mod:`stream.offline.temporal_data`).
        out: where to write the ONNX model; must end in ``.onnx`` (required).
        train: model and training settings (default ``TrainOptions()``: the seeds' model).
        quiet: no per-epoch progress on stderr (default ``False``).
    """

    data: str | Path
    out: str | Path
    train: TrainOptions = field(default_factory=TrainOptions)
    quiet: bool = False


class TrainTemporalError(Exception):
    """``train-temporal`` failed (one-line message); ``code`` is the exit status (2: bad input,
    1: training or export failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def run_train_temporal(options: TrainTemporalOptions) -> int:
    """Train, export and check the model; prints a JSON summary on stdout.  Returns 0;
    raises :class:`TrainTemporalError` on failure."""
    opts = options.train
    try:
        data = load_sequences(options.data)
    except (ValueError, DataError) as exc:
        raise TrainTemporalError(str(exc)) from None
    out = Path(options.out)
    if out.suffix.lower() != ".onnx":
        raise TrainTemporalError(f"--out must end in .onnx, got {out}")
    quiet = bool(options.quiet)

    def say(msg: str) -> None:
        if not quiet:
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()

    labelled = data.labelled()
    counts = np.bincount(labelled.labels, minlength=len(BASIC))
    say(
        f"{len(labelled)} labelled windows [{labelled.seq_len} x {labelled.dim}] ({labelled.feature_kind}); "
        + ", ".join(f"{BASIC[c]} {n}" for c, n in enumerate(counts) if n)
    )
    try:
        result = train(labelled, opts, progress=say)
    except DataError as exc:
        raise TrainTemporalError(str(exc)) from None
    except RuntimeError as exc:
        raise TrainTemporalError(str(exc), 1) from None
    try:
        export_onnx(
            result.model,
            out,
            seq_len=labelled.seq_len,
            dim=labelled.dim,
            metadata=model_metadata(result, labelled, source=str(options.data)),
        )
        diff = check_onnx(result.model, out, labelled.features[:64])
    except Exception as exc:
        raise TrainTemporalError(f"ONNX export failed: {type(exc).__name__}: {exc}", 1) from None
    if diff > ONNX_TOLERANCE:
        out.unlink(missing_ok=True)
        raise TrainTemporalError(
            f"the ONNX model differs from the PyTorch model by {diff:.2e} (> {ONNX_TOLERANCE:g}); nothing written", 1
        )
    print(json.dumps({"out": str(out), "arch": opts.arch, **result.summary(), "onnx_max_abs_diff": diff}))
    return 0

"""Speech trimming and 69 language-independent prosodic/spectral statistics of one stretch of speech.

Numpy only. Used by the voice head (:mod:`stream.modalities.speech.voice`) beside the Whisper
encoder's features: pitch, voicing, energy, rhythm and spectral shape carry emotion in every
language (arousal above all), and they are cheap (about 30 ms for 4 s of audio).

* :func:`speech_mask`: an energy VAD on 25 ms frames every 10 ms: a frame is speech when it is
  within 35 dB of the stretch's loud frames (95th percentile) and above -55 dBFS;
* :func:`trim`: cut leading and trailing non-speech (100 ms margin), keep at most the middle 6 s;
* :func:`prosodic`: the statistics, in this order (69 values):
  pitch in semitones re 100 Hz (mean, std, p10, p50, p90, p90 - p10), |pitch step| (mean, std),
  voiced share of all frames and of speech frames, periodicity (mean, std), energy re the peak
  (6 statistics), |energy step| (mean, std), energy-peak rate (a syllable-rate proxy), pause
  share, speech duration, spectral tilt (dB/octave, 100-5000 Hz), log centroid, log roll-off
  (85 %), log flatness, the <1 kHz / 1-4 kHz energy ratio (mean, std each), and MFCC 1-12
  (mean, std, delta std; MFCC 0 is the gain and is left out).

Pitch is a windowed normalised autocorrelation (40 ms frames, 60-500 Hz) with parabolic
refinement of the peak (Boersma 1993, "Accurate short-term analysis of the fundamental
frequency and the harmonics-to-noise ratio of a sampled sound"); the peak's height is the
periodicity, a harmonics-to-noise proxy.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms
MAX_S = 6.0  # the middle 6 s at most (the live path sees 4 s windows)
N_PROSODIC = 69
_PITCH_WIN = 640  # 40 ms


def frames(x: np.ndarray, win: int = WIN, hop: int = HOP) -> np.ndarray:
    """[n, win] frames of ``x`` every ``hop`` samples (the last partial frame is dropped)."""
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    n = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def speech_mask(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms frame: speech or not, and the frame energy in dBFS."""
    e = 10 * np.log10((frames(x) ** 2).mean(1) + 1e-10)
    ref = np.percentile(e, 95)
    return (e > ref - 35) & (e > -55), e


def trim(x: np.ndarray) -> np.ndarray:
    """``x`` cut to its speech (100 ms margin) and to at most the middle :data:`MAX_S` seconds."""
    m, _ = speech_mask(x)
    if m.any():
        i0 = max(0, int(np.argmax(m)) - 10) * HOP
        i1 = min(len(x), (len(m) - int(np.argmax(m[::-1])) + 10) * HOP + WIN)
        x = x[i0:i1]
    keep = int(MAX_S * SAMPLE_RATE)
    if len(x) > keep:
        s = (len(x) - keep) // 2
        x = x[s : s + keep]
    return x


def pitch(x: np.ndarray, fmin: float = 60.0, fmax: float = 500.0) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: f0 in Hz and its periodicity (normalised autocorrelation peak, 0..1)."""
    win = _PITCH_WIN
    fr = frames(np.pad(x, (0, win)), win=win, hop=HOP)
    fr = fr - fr.mean(1, keepdims=True)
    window = np.hanning(win)
    fr = fr * window[None]
    n = 2 * win
    r = np.fft.irfft(np.abs(np.fft.rfft(fr, n=n)) ** 2, n=n)[:, :win]
    wac = np.fft.irfft(np.abs(np.fft.rfft(window, n=n)) ** 2, n=n)[:win]  # the window's own autocorrelation
    r = r / (wac[None] + 1e-9)
    r = r / (r[:, :1] + 1e-9)
    lo, hi = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    seg = r[:, lo:hi]
    rows = np.arange(seg.shape[0])
    k = np.clip(seg.argmax(1), 1, seg.shape[1] - 2)
    clarity = seg[rows, seg.argmax(1)]
    a, b, c = seg[rows, k - 1], seg[rows, k], seg[rows, k + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c + 1e-9)
    return SAMPLE_RATE / (lo + k + np.clip(offset, -1, 1)), clarity


def _stats(v: np.ndarray, percentiles: bool = True) -> list[float]:
    if len(v) == 0:
        return [0.0] * (6 if percentiles else 2)
    out = [float(v.mean()), float(v.std())]
    if percentiles:
        p10, p50, p90 = np.percentile(v, [10, 50, 90])
        out += [float(p10), float(p50), float(p90), float(p90 - p10)]
    return out


def _mel_filterbank(nfft: int = 512, nmel: int = 40) -> np.ndarray:
    def hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    pts = hz(np.linspace(mel(50), mel(7600), nmel + 2))
    bins = np.fft.rfftfreq(nfft, 1 / SAMPLE_RATE)
    fb = np.zeros((nmel, len(bins)))
    for i in range(nmel):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


_MEL = _mel_filterbank()
_DCT = np.cos(np.pi / 40 * (np.arange(40)[None] + 0.5) * np.arange(1, 13)[:, None])  # MFCC 1..12


def prosodic(x: np.ndarray) -> np.ndarray:
    """The 69 statistics of the module docstring, float32 (NaN-free)."""
    x = np.asarray(x, np.float32)
    m, e = speech_mask(x)
    f0, clar = pitch(x)
    n = min(len(m), len(f0))
    m, e, f0, clar = m[:n], e[:n], f0[:n], clar[:n]
    voiced = m & (clar > 0.5)
    semitones = 12 * np.log2(f0 / 100.0)
    steps = np.diff(semitones)[voiced[1:] & voiced[:-1]]
    feats: list[float] = []
    feats += _stats(semitones[voiced])  # 6 pitch level and range
    feats += _stats(np.abs(steps), False)  # 2 pitch dynamics
    feats += [float(voiced.mean()), float(voiced.sum() / max(1, m.sum()))]  # 2 voicing
    feats += _stats(clar[m], False)  # 2 periodicity
    es = e[m] if m.any() else e
    feats += _stats(es - es.max())  # 6 energy re the peak (gain invariant)
    feats += _stats(np.abs(np.diff(e))[m[1:]], False)  # 2 energy dynamics
    smooth = np.convolve(e, np.ones(5) / 5, mode="same")
    peaks = (smooth[1:-1] > smooth[:-2]) & (smooth[1:-1] >= smooth[2:]) & (smooth[1:-1] > es.max() - 20)
    duration = max(1, int(m.sum())) * HOP / SAMPLE_RATE
    feats += [float(peaks.sum() / duration), float(1 - m.mean()), duration]  # 3 rhythm
    fr = frames(x, 512, HOP)[:n] * np.hanning(512)[None]
    power = np.abs(np.fft.rfft(fr, axis=1)) ** 2 + 1e-10
    sel = m[: len(power)]
    power = power[sel] if sel.any() else power
    f = np.fft.rfftfreq(512, 1 / SAMPLE_RATE)
    band = (f > 100) & (f < 5000)
    design = np.vstack([np.log2(f[band]), np.ones(band.sum())]).T
    tilt = np.linalg.lstsq(design, 10 * np.log10(power[:, band]).T, rcond=None)[0][0]  # dB/octave
    centroid = (power * f).sum(1) / power.sum(1)
    cum = np.cumsum(power, 1) / power.sum(1, keepdims=True)
    rolloff = f[(cum < 0.85).sum(1).clip(0, len(f) - 1)]
    flatness = np.exp(np.log(power).mean(1)) / power.mean(1)
    low_high = 10 * np.log10(power[:, f < 1000].sum(1) / power[:, (f >= 1000) & (f < 4000)].sum(1))
    for v in (tilt, np.log(centroid), np.log(rolloff + 1), np.log(flatness), low_high):
        feats += _stats(v, False)  # 10 spectral shape
    cep = np.log(power @ _MEL.T + 1e-10) @ _DCT.T
    delta = np.diff(cep, axis=0).std(0) if len(cep) > 1 else np.zeros(12)
    feats += list(cep.mean(0)) + list(cep.std(0)) + list(delta)  # 36 MFCC
    out = np.nan_to_num(np.asarray(feats, dtype=np.float32))
    assert out.shape == (N_PROSODIC,)
    return out

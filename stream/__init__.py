"""cer-stream: real-time zero-shot compound expression recognition."""

__version__ = "0.1.0"

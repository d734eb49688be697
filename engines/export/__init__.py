"""Exporters: one module per model, each turning the model's published weights into an ONNX
file carrying ``cer.*`` metadata. torch, open_clip and ultralytics (the ``export`` extra) are
imported inside the functions, so importing these modules costs nothing.

Each ``convert`` exporter has the signature ``export(source: Path, target: Path, spec)`` and
writes ``target`` atomically; :func:`engines.models.registry.export` picks the target (named after the
weights' sha256 and the module's ``EXPORT_VERSION``) and skips the work when it exists.
"""

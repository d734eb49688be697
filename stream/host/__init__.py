"""The model host of ``cer-stream serve``: every model loaded once per machine, the streams'
requests batched (:mod:`stream.host.server`), and the analyzers' side of it
(:mod:`stream.host.client`)."""

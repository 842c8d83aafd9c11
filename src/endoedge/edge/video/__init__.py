"""Video in and out: URI-addressed sources and sinks, and the GStreamer glue under them.

Nothing here knows about models or exams: a source gives :class:`~endoedge.edge.types.Frame` objects,
a sink takes BGR images. This package imports nothing from :mod:`endoedge.edge.stages`.
"""

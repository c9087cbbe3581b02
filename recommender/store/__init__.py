"""Store: articles and how they are parsed, the durable store behind an interface, the vector cache,
the write path and model loading. Everything here survives a restart; indexes are rebuilt from it.
"""

"""Index: the in-memory search structures built from the store (FAISS vectors, BM25, timeline,
columns of metadata), their versions on disk and the loaded state that holds them together.
"""

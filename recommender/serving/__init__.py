"""Serving: what runs in production. Precomputed lists and their upkeep, ingest, the engine
façade over store and indexes, the service the API calls, re-embedding jobs and the demo.
"""

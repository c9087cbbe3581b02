"""Ranking: from a seed article to an ordered related list. Rules (filters, near-duplicates,
diversity), candidate sources, features, the pipeline, learned profiles and how they are tuned.
"""

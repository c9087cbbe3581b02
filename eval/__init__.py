"""Offline evaluation: score strategies and models on labelled articles.

Library code for `recommender eval` and `recommender eval-sts`, plus the
scripts that produced the numbers in the README (see eval/README.md).
"""

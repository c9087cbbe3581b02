"""Readers: their impressions and clicks, A/B experiments between rankings, the reports."""

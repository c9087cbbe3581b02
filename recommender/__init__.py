"""Related-article recommendations for news publishers."""

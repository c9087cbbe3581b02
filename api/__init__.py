"""The HTTP API the site backend and the CMS call."""

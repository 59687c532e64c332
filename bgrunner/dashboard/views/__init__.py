"""The request handlers: ``pages`` (HTML), ``actions`` (form posts), ``api`` (JSON), ``events`` (SSE)."""

"""Server plumbing: the uvicorn server, connection limits, the in-flight body budget, middleware, logs, metrics."""

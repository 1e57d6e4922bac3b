"""The FastAPI application: thin routers that parse, call gridmap and serialise."""

"""HTTP shapes: routes, request validation, error bodies, middleware."""

"""HTTP routes, one module per surface: OpenAI API, operations, async jobs, API docs; the
table that lists them all once (``table``) feeds both the Starlette app and /openapi.json."""

"""HTTP routes, one module per surface: OpenAI API, operations, async jobs, API docs."""

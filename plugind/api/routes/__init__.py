"""REST routes, one module per resource: system (health, ready, metrics), plugins, hooks, context, audit."""

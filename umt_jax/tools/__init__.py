"""Command-line tools: the mesh planner."""

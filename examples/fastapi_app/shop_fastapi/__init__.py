"""A small FastAPI shop that gains LLM features through configuration only."""

"""A minimal Django shop that gains LLM features through settings only."""

"""LLM providers, the agent loop and context engineering (arrives with issue 6)."""

__all__: list[str] = []

"""Tool declarations, workers and their sandbox (arrives with the tool plane, issue 3)."""

__all__: list[str] = []

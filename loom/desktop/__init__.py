"""Hotkeys, clipboard, file changes, timers and notifications as topics (a later issue)."""

__all__: list[str] = []

"""The demo mesh that ``loom demo`` runs: a broker and a few actors, offline."""

from loom.demo.actors import ACTORS, Analyst, Ticker, Trader

__all__ = ["ACTORS", "Analyst", "Ticker", "Trader"]

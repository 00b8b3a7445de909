"""The demo's actors: a price ticker, an analyst that answers quotes, a trader; the
analyst and the trader call the demo worker's tools (``loom.demo.tools``)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from loom.actor import Actor, Event, on
from loom.errors import ToolError

SYMBOLS = ("BTC", "ETH", "SOL")


class Ticker(Actor):
    """Emits ``market.price.<SYMBOL>`` twice a second: a seeded random walk."""

    async def on_start(self) -> None:
        self._rng = random.Random(7)
        self._prices = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}
        self._task = asyncio.create_task(self._tick())

    async def on_stop(self) -> None:
        self._task.cancel()

    async def _tick(self) -> None:
        while True:
            for symbol, last in self._prices.items():
                price = last * (1 + self._rng.gauss(0, 0.004))
                self._prices[symbol] = price
                await self.emit(
                    f"market.price.{symbol}", {"symbol": symbol, "price": round(price, 2)}
                )
            await asyncio.sleep(0.5)


class Analyst(Actor):
    """Watches prices, raises alerts on sharp moves, answers ``quote.get`` requests."""

    async def on_start(self) -> None:
        self.last: dict[str, float] = {}
        self.history: dict[str, list[float]] = {}

    @on("market.price.*")
    async def price(self, event: Event) -> None:
        symbol, price = event.data["symbol"], event.data["price"]
        previous = self.last.get(symbol)
        self.last[symbol] = price
        history = self.history.setdefault(symbol, [])
        history.append(price)
        if previous and abs(price / previous - 1) >= 0.005:
            move = round(100 * (price / previous - 1), 2)
            await self.emit(f"market.alert.{symbol}", {"symbol": symbol, "move_pct": move})
        if len(history) == 10:  # every 10 prices, a summary computed by the demo.stats tool
            self.history[symbol] = []
            try:
                summary = await self.tool("demo.stats", values=history, timeout=2.0)
            except ToolError as exc:  # no worker yet, or it is away: the analyst goes on
                self.log.info("no summary", symbol=symbol, code=exc.code, error=str(exc))
                return
            await self.emit(f"market.summary.{symbol}", {"symbol": symbol, **summary})

    @on("quote.get")
    def quote(self, event: Event) -> dict[str, Any]:
        symbol = event.data["symbol"]
        if symbol not in self.last:
            raise KeyError(f"no price for {symbol} yet")
        return {"symbol": symbol, "price": self.last[symbol]}


class Trader(Actor):
    """Asks the analyst for quotes, decides, and reacts to alerts."""

    async def on_start(self) -> None:
        self._rng = random.Random(11)
        self.position: dict[str, int] = dict.fromkeys(SYMBOLS, 0)
        self._task = asyncio.create_task(self._trade())

    async def on_stop(self) -> None:
        self._task.cancel()

    async def _trade(self) -> None:
        while True:
            await asyncio.sleep(1.5)
            symbol = self._rng.choice(SYMBOLS)
            try:
                quote = await self.request("quote.get", {"symbol": symbol}, timeout=2.0)
            except Exception as exc:  # the analyst may not have a price yet, or be away
                self.log.info("no quote", symbol=symbol, error=str(exc))
                continue
            action = self._rng.choice(("buy", "hold", "sell"))
            position = self.position[symbol]
            try:  # the demo.risk tool keeps the position within its limit
                check = await self.tool(
                    "demo.risk", symbol=symbol, position=position, action=action, timeout=2.0
                )
            except ToolError as exc:
                self.log.info("no risk check", symbol=symbol, code=exc.code, error=str(exc))
                continue
            if not check["allowed"]:
                action = "hold"
            self.position[symbol] = check["position_after"]
            await self.emit(
                "trade.decision",
                {
                    "symbol": symbol,
                    "price": quote["price"],
                    "action": action,
                    "position": self.position[symbol],
                },
            )

    @on("market.alert.*")
    async def alert(self, event: Event) -> None:
        await self.emit("trade.note", {"saw_alert": event.data, "from": event.sender})


ACTORS: dict[str, type[Actor]] = {"ticker": Ticker, "analyst": Analyst, "trader": Trader}

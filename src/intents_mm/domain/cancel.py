"""Which live signed quotes a reference move has made dangerous (pure; cancel-on-move).

A signed quote is a free option for its whole lifetime; the only way to take it back is to spend its
nonce first (protocol reference 4.3). :class:`MoveWatch` holds the live quotes that were priced off a
known reference mid and answers, for each new mid, which of them the mid has moved AGAINST by more than
``threshold_bps`` from the mid they were priced at:

* a quote where we receive the base asset (we buy BTC): a falling mid is against us:
  cancel when ``mid < priced_mid * (1 - t)``;
* a quote where we give the base asset (we sell BTC): a rising mid is against us:
  cancel when ``mid > priced_mid * (1 + t)``;

with ``t = threshold_bps / 10_000``. Each side is a heap ordered by how soon a move reaches it, so a
new mid costs O(k log n) for the k quotes it returns, however many are live. A quote returned by
:meth:`MoveWatch.moved` (or removed) leaves the watch.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["MoveWatch", "WatchedQuote"]

_BPS = Decimal(10_000)


@dataclass(frozen=True)
class WatchedQuote:
    """What the watch needs of a live quote: its nonce (the key), the mid it was priced at, its side."""

    nonce_b64: str
    priced_mid: Decimal
    buys_base: bool  # True: we receive the base asset (a falling mid hurts)


class MoveWatch:
    def __init__(self, threshold_bps: Decimal) -> None:
        if threshold_bps <= 0:
            raise ValueError("threshold_bps must be positive")
        self.threshold_bps = threshold_bps
        self._t = threshold_bps / _BPS
        # buys: max-heap on priced_mid (the highest is hit first by a falling mid) -> store -mid
        self._buys: list[tuple[Decimal, str]] = []
        # sells: min-heap on priced_mid (the lowest is hit first by a rising mid)
        self._sells: list[tuple[Decimal, str]] = []
        self._live: dict[str, WatchedQuote] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, nonce_b64: object) -> bool:
        return nonce_b64 in self._live

    def add(self, quote: WatchedQuote) -> None:
        if quote.priced_mid <= 0:
            raise ValueError("priced_mid must be positive")
        self._live[quote.nonce_b64] = quote
        if quote.buys_base:
            heapq.heappush(self._buys, (-quote.priced_mid, quote.nonce_b64))
        else:
            heapq.heappush(self._sells, (quote.priced_mid, quote.nonce_b64))

    def remove(self, nonce_b64: str) -> WatchedQuote | None:
        """Forget a quote (settled, expired, cancelled); its heap entry is skipped lazily."""
        return self._live.pop(nonce_b64, None)

    def clear(self) -> list[WatchedQuote]:
        gone = list(self._live.values())
        self._live.clear()
        self._buys.clear()
        self._sells.clear()
        return gone

    def most_exposed(self) -> tuple[Decimal | None, Decimal | None]:
        """The priced mids a move reaches first: the highest buy's and the lowest sell's."""
        while self._buys and self._buys[0][1] not in self._live:
            heapq.heappop(self._buys)
        while self._sells and self._sells[0][1] not in self._live:
            heapq.heappop(self._sells)
        return (
            -self._buys[0][0] if self._buys else None,
            self._sells[0][0] if self._sells else None,
        )

    def moved(self, mid: Decimal) -> list[WatchedQuote]:
        """The quotes ``mid`` has moved against by more than the threshold (removed from the watch)."""
        if mid <= 0:
            return []
        out: list[WatchedQuote] = []
        # buys are hit when priced_mid > mid / (1 - t)
        buy_bound = mid / (1 - self._t) if self._t < 1 else None
        buys = self._buys
        while buys and (buy_bound is not None and -buys[0][0] > buy_bound):
            neg_mid, nonce = heapq.heappop(buys)
            self._take(nonce, -neg_mid, True, out)
        # sells are hit when priced_mid < mid / (1 + t)
        sell_bound = mid / (1 + self._t)
        sells = self._sells
        while sells and sells[0][0] < sell_bound:
            priced, nonce = heapq.heappop(sells)
            self._take(nonce, priced, False, out)
        self._compact()
        return out

    def _take(self, nonce: str, priced_mid: Decimal, buys_base: bool, out: list[WatchedQuote]) -> None:
        quote = self._live.get(nonce)  # None (or another entry) when this heap entry is stale
        if quote is not None and quote.buys_base is buys_base and quote.priced_mid == priced_mid:
            del self._live[nonce]
            out.append(quote)

    def _compact(self) -> None:
        """Rebuild the heaps when lazily deleted entries outnumber the live ones (bounded memory)."""
        if len(self._buys) + len(self._sells) > 2 * len(self._live) + 64:
            live = self._live.values()
            self._buys = [(-q.priced_mid, q.nonce_b64) for q in live if q.buys_base]
            self._sells = [(q.priced_mid, q.nonce_b64) for q in live if not q.buys_base]
            heapq.heapify(self._buys)
            heapq.heapify(self._sells)

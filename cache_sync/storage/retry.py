"""Retries, in exactly one place: transient faults (5xx, SlowDown, resets, timeouts) are
retried with jittered exponential backoff, honouring Retry-After; permanent ones (403, missing
object, bad request) fail at once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from cache_sync.errors import TransientStorageError
from cache_sync.storage.base import ObjectInfo, Readable, Store

log = logging.getLogger("cache_sync.retry")
T = TypeVar("T")


class Backoff:
    """Full-jitter exponential backoff that waits at least what Retry-After asks."""

    def __init__(self, base: float, cap: float) -> None:
        self._jitter = wait_random_exponential(multiplier=base, max=cap)
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        wait = self._jitter(state)
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after:
            wait = max(wait, min(float(after), self.cap))
        return wait


def retrying(attempts: int, base: float = 0.2, cap: float = 20.0) -> Retrying:
    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying after %s (attempt %d of %d)", exc, state.attempt_number, attempts)

    return Retrying(
        retry=retry_if_exception_type(TransientStorageError),
        stop=stop_after_attempt(attempts),
        wait=Backoff(base, cap),
        before_sleep=_log,
        reraise=True,
    )


class RetryingStore(Store):
    """Wraps any store; ``open_range`` retries the request, not the stream (callers retry a
    broken stream from where they are, see transfer.py)."""

    def __init__(self, inner: Store, attempts: int, base: float = 0.2, cap: float = 20.0):
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base = base
        self.cap = cap

    def call(self, fn: Callable[[], T]) -> T:
        return retrying(self.attempts, self.base, self.cap)(fn)

    def get(self, key: str) -> bytes:
        return self.call(lambda: self.inner.get(key))

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        return self.call(lambda: self.inner.open_range(key, start, length))

    def put(self, key: str, data: bytes) -> None:
        self.call(lambda: self.inner.put(key, data))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self.call(lambda: list(self.inner.list(prefix))))

    def delete(self, keys: list[str]) -> None:
        self.call(lambda: self.inner.delete(keys))

    def head(self, key: str) -> ObjectInfo | None:
        return self.call(lambda: self.inner.head(key))

    def close(self) -> None:
        self.inner.close()

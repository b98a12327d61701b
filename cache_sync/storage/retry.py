"""Retries, in exactly one place: transient faults (5xx, SlowDown, resets, timeouts, a stream
that breaks or arrives corrupt) are retried with full-jitter exponential backoff, at least what
Retry-After asks and at most the configured cap; permanent ones (403, missing object, bad
request) fail at once.

One budget per request: ``CACHE_SYNC_RETRIES`` is the number of attempts in total. A reader
that streams a body (``transfer.Fetcher``) runs its request and the reading of the stream as
one attempt under ``Store.with_retries``; resuming a broken stream from where it stopped is the
next attempt of the same budget, never a budget of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from cache_sync.errors import TransientStorageError
from cache_sync.storage.base import ObjectInfo, Readable, Store
from cache_sync.versions import VersionInfo

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("cache_sync.retry")
T = TypeVar("T")


class Backoff:
    """Full-jitter exponential backoff that waits at least what Retry-After asks."""

    def __init__(self, base: float, cap: float) -> None:
        from tenacity.wait import wait_random_exponential

        self._jitter = wait_random_exponential(multiplier=base, max=cap)
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        wait = float(self._jitter(state))
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after:
            wait = max(wait, min(float(after), self.cap))
        return wait


class RetryPolicy:
    """``attempts`` tries in total, backoff from ``base`` seconds capped at ``cap``."""

    def __init__(self, attempts: int, base: float = 0.2, cap: float = 20.0) -> None:
        self.attempts = max(1, attempts)
        self.base = base
        self.cap = cap

    def call(self, fn: Callable[[], T],
             retry_on: tuple[type[BaseException], ...] = (TransientStorageError,)) -> T:
        # The first attempt runs without tenacity: when nothing fails (an up-to-date pull's
        # few requests) its import (~10 ms with inspect) is not paid. A failure is handed to
        # tenacity as its attempt 1, so the schedule, the log and the budget are unchanged.
        try:
            return fn()
        except retry_on as exc:
            if self.attempts == 1:
                raise
            first: list[BaseException] = [exc]

        def attempt() -> T:
            if first:
                raise first.pop()
            return fn()

        return self._retrying(retry_on)(attempt)

    def _retrying(self, retry_on: tuple[type[BaseException], ...]) -> Callable[..., T]:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

        def _log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("retrying after %s (attempt %d of %d)", exc, state.attempt_number,
                     self.attempts)

        return Retrying(
            retry=retry_if_exception_type(retry_on),
            stop=stop_after_attempt(self.attempts),
            wait=Backoff(self.base, self.cap),
            before_sleep=_log,
            reraise=True,
        )


class RetryingStore(Store):
    """Wraps any store: every request is one call under the policy. ``open_range`` retries
    opening the stream only; a caller that reads streams uses ``with_retries`` over ``raw``
    so that the request and its stream share one budget."""

    def __init__(self, inner: Store, policy: RetryPolicy) -> None:
        self.inner = inner
        self.url = inner.url
        self.policy = policy

    @property
    def raw(self) -> Store:
        return self.inner

    def with_retries(self, fn: Callable[[], T],
                     retry_on: tuple[type[BaseException], ...] = (TransientStorageError,)
                     ) -> T:
        return self.policy.call(fn, retry_on)

    def get(self, key: str) -> bytes:
        return self.policy.call(lambda: self.inner.get(key))

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        return self.policy.call(lambda: self.inner.open_range(key, start, length))

    def put(self, key: str, data: bytes) -> None:
        self.policy.call(lambda: self.inner.put(key, data))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self.policy.call(lambda: list(self.inner.list(prefix))))

    def delete(self, keys: Sequence[str]) -> None:
        self.policy.call(lambda: self.inner.delete(keys))

    def head(self, key: str) -> ObjectInfo | None:
        return self.policy.call(lambda: self.inner.head(key))

    def list_versions(self, prefix: str) -> Iterator[VersionInfo]:
        return iter(self.policy.call(lambda: list(self.inner.list_versions(prefix))))

    def delete_versions(self, versions: Sequence[VersionInfo]) -> None:
        self.policy.call(lambda: self.inner.delete_versions(versions))

    def close(self) -> None:
        self.inner.close()

"""The push's half of gc's protocol (docs/design.md 6.1) decides on store times only: a
worker's wall clock never tells whether a mark is late."""

from __future__ import annotations

from cache_sync import gcmarks
from cache_sync.layout import OBJECTS
from cache_sync.storage.base import ObjectInfo
from cache_sync.storage.memory import MemoryStore

OID = "ab" + "0" * 62
AHEAD = 3600.0  # the store's clock is an hour ahead of this worker's


class SkewedStore(MemoryStore):
    """A store whose clock runs ``AHEAD`` of the worker's and whose HEAD of a claim just
    written finds nothing (a store that lags, or a proxy that drops the reply)."""

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        body, mtime = self.objects[key]
        self.objects[key] = (body, mtime + AHEAD)

    def head(self, key: str) -> ObjectInfo | None:
        if key.startswith(gcmarks.CLAIMS):
            self.requests["head"] += 1
            return None
        return super().head(key)


def _store_with_mark(age: float, grace: float = 100.0, window: float = 5.0) -> SkewedStore:
    store = SkewedStore()
    store.put(f"{OBJECTS}{OID[:2]}/{OID}", b"x")
    key = gcmarks.write_mark(store, [OID], grace, window)
    body, mtime = store.objects[key]
    store.objects[key] = (body, mtime - age)  # written ``age`` seconds ago, store time
    return store


def test_a_claim_the_store_cannot_date_treats_every_mark_as_late():
    """The mark is 95 s old of a 100 s delay: a claim made now is late for it (its objects may
    be deleted within the 10 s a LIST may lag). Without the claim's LastModified the push
    must wait out the mark's window and look again; the worker's clock (an hour behind the
    store's) would say the mark has an hour to go, and the push would trust an object gc is
    about to delete."""
    store = _store_with_mark(age=95.0)
    slept: list[float] = []
    claim = gcmarks.PushClaim(store, "packages-x", sleep=slept.append)
    heads_before = store.requests["head"]
    assert claim.claim({OID}) == set()
    assert len(slept) == 1 and 0 < slept[0] <= 5.0, slept
    assert store.requests["head"] - heads_before == 2  # the claim's date, then the object again


def test_a_late_object_gone_after_the_wait_is_not_named():
    store = _store_with_mark(age=95.0)

    def gc_deletes_meanwhile(seconds: float) -> None:
        store.delete([f"{OBJECTS}{OID[:2]}/{OID}"])

    claim = gcmarks.PushClaim(store, "packages-x", sleep=gc_deletes_meanwhile)
    assert claim.claim({OID}) == {OID}


def test_a_dated_claim_far_from_the_marks_delay_does_not_wait():
    store = _store_with_mark(age=0.0)
    real_head = MemoryStore.head
    store.head = lambda key: real_head(store, key)  # type: ignore[method-assign]
    slept: list[float] = []
    assert gcmarks.PushClaim(store, "packages-x", sleep=slept.append).claim({OID}) == set()
    assert slept == []

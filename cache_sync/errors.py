"""The error hierarchy. Every error a user can cause or meet carries a one-line message that
names the problem and, where there is one, the fix. The CLI maps these to exit codes in one
table (``cli/main.py``); nothing else prints tracebacks for them.

Classes also inherit the builtin they resemble, so callers that only know the standard library
(``except FileNotFoundError``) still work.
"""

from __future__ import annotations


class CacheSyncError(Exception):
    """Base of every error cache-sync raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(CacheSyncError, ValueError):
    """A setting (flag or environment variable) is missing or malformed."""

    exit_code = 2


class CommandNotFound(ConfigError):
    """``run``'s command does not exist: 127, as shells report it."""

    exit_code = 127


class CommandNotExecutable(ConfigError):
    """``run``'s command exists but cannot be executed: 126, as shells report it."""

    exit_code = 126


class LockedError(CacheSyncError):
    """Another cache-sync process holds the local cache lock."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class StorageError(CacheSyncError, OSError):
    """The bucket (or local store directory) failed an operation."""

    exit_code = 3
    code = ""  # the store's own error code (e.g. AccessDenied, NoSuchBucket), when it gave one


class TransientStorageError(StorageError):
    """A fault worth retrying: 5xx, throttling, reset connections, timeouts."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ObjectNotFound(StorageError, FileNotFoundError):
    """A key does not exist in the store."""


class AccessDenied(StorageError, PermissionError):
    """The credentials are refused (403) or the bucket does not allow the operation."""


class FormatError(CacheSyncError):
    """The store holds something this version cannot read: unknown format version, malformed
    or hostile snapshot (unsafe paths, duplicates, lies about sizes)."""

    exit_code = 5


class IntegrityError(CacheSyncError):
    """Downloaded bytes do not match the hash the snapshot records."""

    exit_code = 5


class DiskSpaceError(CacheSyncError, OSError):
    """Not enough free space on the cache root (checked before writing, or ENOSPC on write)."""

    exit_code = 4


class DeadlineExceeded(CacheSyncError, TimeoutError):
    """An operation was cut off by its time budget (e.g. ``run --push-timeout``)."""

    exit_code = 124

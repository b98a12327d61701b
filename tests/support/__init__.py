"""Test helpers shared by every test level (unit, functional, faults, handler) and by
``bench``: real S3 servers, the CLI runner, the fault proxy and kill harness, the local
package index, the small filesystem. Import as ``from tests.support import s3servers``;
``tests/conftest.py`` puts the repository root on ``sys.path`` (the only place that does)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

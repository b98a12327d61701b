"""The directory ``run --unit-start`` puts first on CMD's ``PYTHONPATH``: its
``sitecustomize.py`` installs the import hook of docs/design.md section 5.4 in CMD's
interpreter (standard library only: that interpreter need not have cache-sync installed)."""

from pathlib import Path

DIR = Path(__file__).resolve().parent

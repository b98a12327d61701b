"""RunPod serverless worker for F5-TTS, warm-loaded from the cache-sync cache.

Run from the repository root (or an installed image) with ``python -m handler``.
"""

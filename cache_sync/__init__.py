"""cache-sync: keep a serverless worker's heavy cache (packages, models) in an S3 bucket."""

__version__ = "0.1.0"

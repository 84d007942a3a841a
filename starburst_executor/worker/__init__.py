"""The worker entrypoint shipped in the image: ``python -m starburst_executor.worker``."""

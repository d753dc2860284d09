"""The engine: the run loop, one job's lifecycle, retries, limits, plans and shards."""

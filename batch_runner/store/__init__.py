"""What a run keeps on disk: the ledger, image files, the lock, the run directory."""

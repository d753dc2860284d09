"""What is made from a finished ledger: status reports, datasets, merges, galleries."""

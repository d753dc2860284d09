"""The `batch-runner` command line: one thin consumer of the library."""

"""`python -m batch_runner` is the same as the `batch-runner` console script."""

from batch_runner.cli.main import main

raise SystemExit(main())

"""The benchmark runner: prompt suites x seeds x checkpoints -> videos -> scores -> Table-1 report."""

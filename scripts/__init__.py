"""The `mediacdn` command and the operator scripts (S3 test server, benchmarks)."""

"""ohmdb workloads and benchmarks: voter (VoltDB's sample), with more to come."""

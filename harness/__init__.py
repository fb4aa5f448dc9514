"""Test and benchmark harness: real service processes and HTTP load, shared by tests/ and bench/."""

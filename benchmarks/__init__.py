"""Speed and memory benchmarks: ``python -m benchmarks.run`` (``make bench``) prints tables and writes JSON."""

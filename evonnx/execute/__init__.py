"""The execution layer: offspring jobs and where they run (in process, worker processes,
Ray), data-parallel retraining, and Ctrl-C handling."""

"""The evolution layer: the run's settings, its lineage and run folder, checks made
before writing, the generation loop and the speed report."""

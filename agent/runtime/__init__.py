"""What runs inside a trial: the trial configuration, the pipeline builder and the worker process."""

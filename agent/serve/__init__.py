"""`wan-agent serve`: a converged run behind OpenAI's video API (``/v1/videos``), one GPU worker behind a bounded queue.

protocol.py: request parsing and the OpenAI shapes; jobs.py: jobs and their videos on disk; app.py: the routes;
metrics.py: /metrics; engine.py and worker.py: the GPU side.
"""

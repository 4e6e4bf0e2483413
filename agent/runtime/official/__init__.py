"""The official Wan2.2 code (PyPI ``wan22``) as a runtime: what it needs patched to run here, and how it is driven."""

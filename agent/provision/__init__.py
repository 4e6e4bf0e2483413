"""Environments that fit the hardware: what the installed packages can use here, and what they cannot."""

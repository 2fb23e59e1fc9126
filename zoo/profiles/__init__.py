"""Throughput profiles measured so far (``zoo calibrate NAME``), shipped as package data."""

"""Inference engines: one module per engine, the hardware probe, and the selection table."""

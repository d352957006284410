"""Shared device code: the emulation header, Philox, reductions."""

"""Shared fixtures: tests talk to a real emulator over a real socket."""

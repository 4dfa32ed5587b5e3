"""Flower ClientApps that emulate devices."""

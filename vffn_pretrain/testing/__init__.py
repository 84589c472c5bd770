"""Helpers for testing distributed code on CPU: a pool of gloo ranks that runs functions on every rank."""

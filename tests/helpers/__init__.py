"""Test doubles for the core suite: in-process backends and fake installed plugins."""

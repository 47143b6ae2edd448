"""Copying provider media into our object store."""

"""Secrets at rest and the SSRF guard for every URL we fetch."""

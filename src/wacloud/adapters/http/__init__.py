"""HTTP clients at the edge (aiohttp): provider API calls and media downloads."""

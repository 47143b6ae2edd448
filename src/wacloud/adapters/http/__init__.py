"""HTTP clients at the edge: provider API calls (aiohttp) and media downloads (httpx)."""

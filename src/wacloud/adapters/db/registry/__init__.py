"""The registry ("master") database: tenants, channels, API keys, parked payloads, audit."""

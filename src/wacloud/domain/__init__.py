"""The core's own concepts, free of I/O: normalized records, rate-limit maths, media types,
checks of what operators and tenants submit."""

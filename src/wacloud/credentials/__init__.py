"""The credentials broker (provider ids -> tenant, channel, secrets, tenant DB), its HTTP and
Lambda service, key rotation and token checks."""

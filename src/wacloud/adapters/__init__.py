"""Adapters: the edges of the system (queues, media stores, databases) behind small interfaces."""

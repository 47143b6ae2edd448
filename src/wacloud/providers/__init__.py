"""Provider modules: the only code that knows provider JSON (Meta Cloud API, Whapi, Chakra).

Each module turns webhook bodies into normalized `wacloud.domain.model` events and says how to fetch
a message's media file; nothing outside this package reads provider payloads.
"""

"""wacloud: a multi-tenant WhatsApp messaging gateway (Meta Cloud API, Whapi, Chakra)."""

__version__ = "0.1.0"

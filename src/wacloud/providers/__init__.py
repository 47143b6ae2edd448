"""Providers: the only code that knows provider JSON (Meta Cloud API, Whapi, Chakra).

`PROVIDERS` maps each `Provider` value to its port (`wacloud.providers.base.ProviderPort`):
webhook paths and authentication, parsing, media and send requests, error classification,
media hosts, default base URL, token checks. Callers look a port up once per route or channel
and never name a provider. Adding one: a folder beside `meta/`, `whapi/`, `chakra/` with its
port, a `Provider` value, and one line here.
"""

from __future__ import annotations

from wacloud.domain.model import Channel, Provider
from wacloud.providers.base import ProviderPort
from wacloud.providers.chakra import ChakraProvider
from wacloud.providers.meta import MetaProvider
from wacloud.providers.whapi import WhapiProvider

PROVIDERS: dict[Provider, ProviderPort] = {
    Provider.META: MetaProvider(),
    Provider.WHAPI: WhapiProvider(),
    Provider.CHAKRA: ChakraProvider(),
}


# By name too: a queued header names its provider as text (a `Provider` is a str as well).
_BY_NAME: dict[str, ProviderPort] = {provider.value: found for provider, found in PROVIDERS.items()}


def port(provider: Provider | str) -> ProviderPort:
    """The port of a provider (its enum value or its name, e.g. a queued header's);
    ValueError for a name no provider has."""
    found = _BY_NAME.get(provider)
    if found is None:
        raise ValueError(f"{provider!r} is not a provider")
    return found

Channel.DEFAULT_BASE_URLS.update({p: found.default_base_url for p, found in PROVIDERS.items()})

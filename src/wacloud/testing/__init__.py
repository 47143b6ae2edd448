"""Test-support code shipped with wacloud.

`wacloud.testing.fake_provider` is a real HTTP stand-in for Meta's Graph API, Whapi and Chakra
that unit tests, the demo and the benchmarks talk to instead of the real providers. Nothing is
imported here eagerly so that importing `wacloud.testing` stays cheap.
"""

"""The platform ABI: the only package both sides of the trust boundary import.

Data only: enums for calls, exits, fields and result codes, frozen request/reply
dataclasses, and one bytes codec.  It imports nothing else of tvmm (checked in CI).
"""

"""Authentication, authorization and bans, plugged into the broker through its hooks.

``tidemq.auth.api`` holds the interfaces every source implements; see docs/security.md.
"""

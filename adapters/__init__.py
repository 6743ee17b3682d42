"""Adapters: one module per external system (or file), the Adapter protocol and the registry.

Adapters never touch the store; they import only `state.models` and `state.addresses`.
"""

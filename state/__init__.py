"""The local suppression store: models, address rules, schema and the SQLite store.

Nothing in this package makes network calls; adapters import only its models.
"""

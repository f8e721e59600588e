"""``bess-edge api``: the operator's window (REST API, OpenAPI at /docs, dashboard at /).

:func:`bess_edge.api.app.create_app` takes a storage backend and a key store, so the gateway
(SQLite) and the cloud (PostgreSQL) serve the same API.
"""

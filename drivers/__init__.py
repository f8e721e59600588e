"""Device drivers: each turns one kind of BMS connection into :class:`bess_edge.model.Reading`.

Installed as ``bess_edge.drivers``; the interface and the registry are in :mod:`.base`.
"""

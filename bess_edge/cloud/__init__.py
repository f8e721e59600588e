"""The cloud side: ``bess-edge ingest`` workers that fill PostgreSQL from a fleet's MQTT topics.

See docs/cloud.md. Nothing here runs on a gateway; it needs the ``cloud`` extra (psycopg 3,
jsonschema).
"""

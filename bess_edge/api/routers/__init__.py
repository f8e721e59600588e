"""One APIRouter per resource, included by :func:`bess_edge.api.app.create_app`."""

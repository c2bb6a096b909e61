"""The public import path of the DB-API client: ``from sqlinfer.client import connect``
(implemented in :mod:`sqlinfer.serve.client`)."""

from sqlinfer.serve.client import connect

__all__ = ["connect"]

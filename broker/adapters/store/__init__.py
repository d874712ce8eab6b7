"""State store port and its implementations (memory:// here, redis:// in
broker.adapters.store.redis)."""

from broker.app.ports import Quotas, Store

__all__ = ["Quotas", "Store"]

"""State store port and its implementations (memory:// here, redis:// in broker.store.redis)."""

from broker.store.base import Quotas, Store

__all__ = ["Quotas", "Store"]

"""Device drivers: the interfaces, the registry and reconnect supervision."""

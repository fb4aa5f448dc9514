"""The three HTTP services. Each imports `app` and `services.common`, never another service."""

"""The three HTTP services. Each imports `app` and the shared `services.http` (and, for the model
services, `services.model_service`), never another service."""

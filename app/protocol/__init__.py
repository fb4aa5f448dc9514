"""Wire schemas (pydantic), defined once: the services validate with them, the clients build
them. Requests convert themselves into engine inputs; the engine never sees these classes."""

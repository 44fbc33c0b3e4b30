"""Serving: the SageMaker inference handlers and the local endpoint server."""

"""Flower apps: the ServerApp and the (light) ClientApp, loaded by reference."""

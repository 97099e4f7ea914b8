"""Engines: where clients run (simulation: in process; flower/: Flower's deployment and simulation).

Kept free of imports: a Flower ClientApp process imports engines.flower.node first and must not
pay for torch. The engine registry (core.registry.ENGINES) imports the built-in engines itself.
"""

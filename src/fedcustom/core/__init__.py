"""Layer 0: types, config schema, errors, files, registries, devices: no other fedcustom layer."""

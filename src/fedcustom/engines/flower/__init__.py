"""Flower's engines: the server side (server), a client site's training (client), SecAgg+ (secagg),
local and remote deployments (deploy, credentials), and what a SuperNode knows of itself (node)."""

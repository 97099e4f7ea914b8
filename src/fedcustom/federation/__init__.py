"""The round loop (rounds), update screening, simulated faults and attacks: the server side of a
round and a client's update, the same on every engine."""

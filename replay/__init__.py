"""Middle floor: transports, cost tables and the replay engine (works on frames from parsers)."""

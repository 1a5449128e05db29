"""The loopback HTTP API the till software calls, and its event stream."""

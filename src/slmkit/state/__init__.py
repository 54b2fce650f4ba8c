"""Shared state of the gateway: one interface over SQLite files (the zero-set-up default) and
PostgreSQL (several gateways sharing one audit log), selected by URL in the serve config."""

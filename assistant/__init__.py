"""The server, APIs, web UI, generation engine and command line."""

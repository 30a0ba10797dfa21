"""SQLite store for users, conversations, messages, feedback, adapters and training runs."""

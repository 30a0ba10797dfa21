"""Base model, features, reward heads, policy training and the adapter registry."""
